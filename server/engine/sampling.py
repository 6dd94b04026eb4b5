"""Per-request token choice: which sampler does what, and when.

Plain greedy requests take a numpy argmax over the logits row (measured ~18x cheaper than a
llama.cpp greedy sampler object); everything else runs a llama.cpp sampler chain built once
per request (server/llama/sampler.py).

A grammar (GBNF, e.g. from a JSON schema) constrains the choice the way llama.cpp's
common sampler does: pick a token without the grammar, check that one token against it
(microseconds), and only when it is rejected mask the whole vocabulary with the grammar
(5-15 ms for a 49k vocabulary here, more than a decode step) and pick again.
"""

from __future__ import annotations

import numpy as np

from server.llama.context import LlamaContext
from server.llama.model import LlamaModel
from server.llama.sampler import (
    Candidates,
    Sampler,
    SamplingParams,
    chain_sampler,
    effective_bias,
    grammar_sampler,
)

__all__ = ["SamplingParams", "TokenSampler"]


class TokenSampler:
    """Chooses the next token of one sequence. Owned by the engine thread."""

    def __init__(
        self,
        params: SamplingParams,
        model: LlamaModel,
        context_length: int,
        banned: frozenset[int],
    ) -> None:
        n_vocab, vocab = model.n_vocab, model.vocab
        bias = {t: effective_bias(b) for t, b in params.logit_bias.items()}
        if any(not 0 <= t < n_vocab for t in bias):
            raise ValueError("logit_bias names a token outside the vocabulary")
        for t in banned:
            bias[t] = -np.inf
        self._bias_ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        self._bias_values = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
        self._grammar: Sampler | None = None
        self._chain: Sampler | None = None
        try:
            if params.grammar is not None:
                self._grammar = grammar_sampler(vocab, params.grammar)
                self._candidates = Candidates(n_vocab)
                self._one = Candidates(1)
            if params.needs_chain:
                self._chain = chain_sampler(params, bias, vocab, context_length)
        except BaseException:
            self.close()  # the llama.cpp objects made before the failure
            raise

    def sample(self, ctx: LlamaContext, batch_index: int) -> int | None:
        """The next token; None when a grammar allows nothing more (the output is complete)."""
        if self._grammar is not None:
            return self._sample_with_grammar(ctx.logits(batch_index))
        if self._chain is not None:
            # Samples from the row and accepts the token (the penalties remember it).
            return self._chain.sample(ctx, batch_index)
        return self._argmax(ctx.logits(batch_index))

    def _argmax(self, scores: np.ndarray) -> int:
        """The best token after the logit bias (scores itself is left as it is)."""
        if self._bias_ids.size:
            scores = scores.copy()
            scores[self._bias_ids] += self._bias_values
        return int(np.argmax(scores))

    def _sample_with_grammar(self, logits: np.ndarray) -> int | None:
        assert self._grammar is not None
        token = self._pick(logits, masked=False)
        if not self._allows(token):
            token = self._pick(logits, masked=True)
            if token < 0:
                return None  # the grammar is complete, or allows nothing left
        self._grammar.accept(token)
        if self._chain is not None:
            self._chain.accept(token)
        return token

    def _pick(self, logits: np.ndarray, masked: bool) -> int:
        """The token the chain (or argmax) chooses, without accepting it; with masked, among
        the tokens the grammar allows (-1: none)."""
        if not masked and self._chain is None:
            return self._argmax(logits)
        cand = self._candidates
        cand.fill(logits)
        if masked:
            assert self._grammar is not None
            self._grammar.apply(cand)
            allowed = np.isfinite(cand.data["logit"])
            if self._bias_ids.size:
                allowed[self._bias_ids[np.isneginf(self._bias_values)]] = False
            if not allowed.any():
                return -1
        if self._chain is None:
            return self._argmax(cand.data["logit"])
        self._chain.apply(cand)
        return cand.selected

    def _allows(self, token: int) -> bool:
        assert self._grammar is not None
        self._one.one(token)
        self._grammar.apply(self._one)
        return bool(np.isfinite(self._one.data["logit"][0]))

    def close(self) -> None:
        for sampler in (self._chain, self._grammar):
            if sampler is not None:
                sampler.close()
        self._chain = self._grammar = None
