"""Relevance scores of (query, document) pairs from a cross-encoder run by llama.cpp.

A reranker GGUF (a BERT or XLM-RoBERTa cross-encoder such as ms-marco-MiniLM or
bge-reranker, or a model whose GGUF carries a "rerank" template) pools each pair into one
score (llama.cpp's rank pooling). Pairs are laid out as llama-server lays them out: the
model's "rerank" template when it has one, else [BOS] query [EOS] [SEP] document [EOS]
with the markers the vocabulary asks for (BERT's WordPiece: [CLS] query [SEP] document
[SEP]). Scores come back as the model's logits (retrieval/reranking.py's `relevance` maps
them to 0..1).

The pairs of concurrent requests share llama.cpp calls through an Embedder (its own
context and thread), so reranking never stalls chat or embeddings.
"""

from __future__ import annotations

import concurrent.futures

import llama_cpp
import numpy as np

from server.engine.embedder import Embedder, EmbedderError
from server.llama.model import LlamaModel


class RerankerError(EmbedderError):
    pass


class Reranker:
    def __init__(self, model: LlamaModel, n_ctx: int, n_seq_max: int, n_threads: int) -> None:
        self.model = model
        self._scorer = Embedder(
            model,
            n_ctx,
            n_seq_max,
            n_threads,
            normalize=False,
            thread=("hearth-reranker", "the reranking thread"),
        )
        if self._scorer.ctx.pooling != llama_cpp.LLAMA_POOLING_TYPE_RANK:
            self._scorer.stop()
            raise RerankerError(
                f"{model.path.name} is not a reranker: its GGUF does not ask for rank pooling "
                "(a cross-encoder such as bge-reranker or ms-marco-MiniLM converted to GGUF)"
            )
        self.max_tokens = self._scorer.max_tokens
        self._template = model.named_template("rerank")

    # --- any thread -----------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._scorer.alive

    @property
    def failure(self) -> str | None:
        return self._scorer.failure

    def start(self) -> None:
        self._scorer.start()

    def stop(self) -> None:
        self._scorer.stop()

    def pair_tokens(self, query: str, document: str) -> list[int]:
        """The tokens of one pair, the document cut to fit the model (the query too, to
        half of it, when it alone would not leave room)."""
        if self._template is not None:
            text = self._template.replace("{query}", query).replace("{document}", document)
            return self.model.tokenize(text, add_special=False, parse_special=True)[
                : self.max_tokens
            ]
        m = self.model
        q = m.tokenize(query, add_special=False)
        d = m.tokenize(document, add_special=False)
        head: list[int] = [m.bos_token] if m.add_bos and m.bos_token is not None else []
        middle: list[int] = []
        tail: list[int] = []
        if m.adds_eos and m.eos_token is not None:
            middle.append(m.eos_token)
            tail.append(m.eos_token)
        if m.adds_sep and m.sep_token is not None:
            middle.append(m.sep_token)
            if m.is_wordpiece and not tail:  # [CLS] query [SEP] document [SEP]
                tail.append(m.sep_token)
        room = self.max_tokens - len(head) - len(middle) - len(tail)
        q = q[: max(room // 2, room - len(d))]
        d = d[: max(room - len(q), 0)]
        return head + q + middle + d + tail

    def submit(self, pairs: list[list[int]]) -> concurrent.futures.Future[np.ndarray]:
        """Scores (logits) of token pairs from pair_tokens, one per pair. Raises
        EmbedderBusy when too many are waiting, EmbedderError when the thread is gone."""
        future: concurrent.futures.Future[np.ndarray] = concurrent.futures.Future()
        inner = self._scorer.submit(pairs)

        def done(f: concurrent.futures.Future[np.ndarray]) -> None:
            if f.cancelled():
                future.cancel()
            elif (error := f.exception()) is not None:
                future.set_exception(error)
            else:
                future.set_result(f.result()[:, 0].copy())

        inner.add_done_callback(done)
        return future

    def score(self, query: str, documents: list[str]) -> concurrent.futures.Future[np.ndarray]:
        """Tokenizes in the calling thread (run it off the event loop), then submits."""
        return self.submit([self.pair_tokens(query, d) for d in documents])
