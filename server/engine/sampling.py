"""Per-request token sampling.

Plain greedy requests take a numpy argmax over the logits row (measured ~18x cheaper than a
llama.cpp greedy sampler object); everything else runs a llama.cpp sampler chain built once
per request, in llama.cpp's own order: logit bias, penalties, top-k, top-p, min-p,
temperature, then a seeded draw.

A grammar (GBNF, e.g. from a JSON schema) constrains the choice the way llama.cpp's
common sampler does: pick a token without the grammar, check that one token against it
(microseconds), and only when it is rejected mask the whole vocabulary with the grammar
(5-15 ms for a 49k vocabulary here, more than a decode step) and pick again.
"""

from __future__ import annotations

import ctypes
import random
from dataclasses import dataclass, field

import llama_cpp
import numpy as np

from server.engine.context import LlamaContext
from server.engine.grammar import grammar_sampler

# OpenAI documents a bias of -100 as a ban; make it exact instead of merely very unlikely.
BAN_BIAS = -100.0


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    # How many recent tokens the penalties look at; -1: the whole context.
    penalty_last_n: int = 64
    logit_bias: dict[int, float] = field(default_factory=dict)
    # GBNF the output must match (root rule "root"); None: unconstrained.
    grammar: str | None = None
    # DRY ("don't repeat yourself", llama-server's names): penalises extending a sequence
    # that already occurred; 0 is off. Breakers end a sequence; last_n -1: whole context.
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1
    dry_sequence_breakers: tuple[str, ...] = ("\n", ":", '"', "*")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def has_penalties(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repeat_penalty != 1.0
        )


def _effective_bias(bias: float) -> float:
    return -np.inf if bias <= BAN_BIAS else bias


# llama_token_data as numpy sees it, so candidate arrays are filled without a Python loop.
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class _Candidates:
    """A reusable llama_token_data_array over the whole vocabulary."""

    def __init__(self, n_vocab: int) -> None:
        self.data = np.empty(n_vocab, dtype=_TOKEN_DATA)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self.array = llama_cpp.llama_token_data_array(
            data=self.data.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=n_vocab,
            selected=-1,
            sorted=False,
        )
        self.ref = ctypes.byref(self.array)

    def fill(self, logits: np.ndarray) -> None:
        # Samplers reorder and shrink the array in place, so every field is rewritten.
        self.data["id"] = self._ids
        self.data["logit"] = logits
        self.data["p"] = 0.0
        self.array.size = len(self.data)
        self.array.selected = -1
        self.array.sorted = False


class TokenSampler:
    """Chooses the next token of one sequence. Owned by the engine thread."""

    def __init__(
        self,
        params: SamplingParams,
        n_vocab: int,
        context_length: int,
        banned: frozenset[int],
        vocab: llama_cpp.llama_vocab_p | None = None,
    ) -> None:
        bias = {t: _effective_bias(b) for t, b in params.logit_bias.items()}
        if any(not 0 <= t < n_vocab for t in bias):
            raise ValueError("logit_bias names a token outside the vocabulary")
        for t in banned:
            bias[t] = -np.inf
        self._bias_ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        self._bias_values = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
        self._chain = None
        self._grammar = None
        try:
            self._build(params, bias, n_vocab, context_length, vocab)
        except BaseException:
            self.close()  # llama.cpp objects made before the failure
            raise

    def _build(
        self,
        params: SamplingParams,
        bias: dict[int, float],
        n_vocab: int,
        context_length: int,
        vocab: llama_cpp.llama_vocab_p | None,
    ) -> None:
        if params.grammar is not None:
            if vocab is None:
                raise ValueError("a grammar needs the model's vocabulary")
            self._grammar = grammar_sampler(vocab, params.grammar)
            self._candidates = _Candidates(n_vocab)
            self._one = _Candidates(1)
        if params.greedy and not params.has_penalties and params.dry_multiplier <= 0:
            return  # numpy fast path

        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self._chain = chain  # owned (and freed) from here on, even if a step below fails
        add = llama_cpp.llama_sampler_chain_add
        if bias:
            arr = (llama_cpp.llama_logit_bias * len(bias))()
            for i, (t, b) in enumerate(bias.items()):
                arr[i].token = t
                arr[i].bias = float(b)
            add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), arr))
        if params.has_penalties:
            last_n = context_length if params.penalty_last_n < 0 else params.penalty_last_n
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab,
                    last_n,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                ),
            )
        if params.dry_multiplier > 0:
            if vocab is None:
                raise ValueError("DRY needs the model's vocabulary")
            # llama.cpp sizes DRY's buffers by last_n: never beyond the context.
            last_n = params.dry_penalty_last_n
            last_n = context_length if last_n < 0 else min(last_n, context_length)
            breakers = [b.encode() for b in params.dry_sequence_breakers]
            array = (ctypes.c_char_p * len(breakers))(*breakers)
            add(
                chain,
                llama_cpp.llama_sampler_init_dry(
                    vocab,
                    params.dry_multiplier,
                    params.dry_base,
                    min(params.dry_allowed_length, context_length),
                    last_n,
                    array,
                    len(breakers),
                ),
            )
        if params.greedy:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(chain, llama_cpp.llama_sampler_init_top_k(min(params.top_k, n_vocab)))
            if params.top_p < 1.0:
                add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx: LlamaContext, batch_index: int) -> int | None:
        """The next token; None when a grammar allows nothing more (the output is complete)."""
        if self._grammar is not None:
            return self._sample_with_grammar(ctx.logits(batch_index))
        if self._chain is not None:
            # Samples from the row and accepts the token (the penalties remember it).
            return llama_cpp.llama_sampler_sample(self._chain, ctx.ptr, batch_index)
        return self._argmax(ctx.logits(batch_index))

    def _argmax(self, scores: np.ndarray) -> int:
        """The best token after the logit bias (scores itself is left as it is)."""
        if self._bias_ids.size:
            scores = scores.copy()
            scores[self._bias_ids] += self._bias_values
        return int(np.argmax(scores))

    def _sample_with_grammar(self, logits: np.ndarray) -> int | None:
        token = self._pick(logits, masked=False)
        if not self._allows(token):
            token = self._pick(logits, masked=True)
            if token < 0:
                return None  # the grammar is complete, or allows nothing left
        llama_cpp.llama_sampler_accept(self._grammar, token)
        if self._chain is not None:
            llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    def _pick(self, logits: np.ndarray, masked: bool) -> int:
        """The token the chain (or argmax) chooses, without accepting it; with masked, among
        the tokens the grammar allows (-1: none)."""
        if not masked and self._chain is None:
            return self._argmax(logits)
        cand = self._candidates
        cand.fill(logits)
        if masked:
            llama_cpp.llama_sampler_apply(self._grammar, cand.ref)
            allowed = np.isfinite(cand.data["logit"])
            if self._bias_ids.size:
                allowed[self._bias_ids[np.isneginf(self._bias_values)]] = False
            if not allowed.any():
                return -1
        if self._chain is None:
            return self._argmax(cand.data["logit"])
        llama_cpp.llama_sampler_apply(self._chain, cand.ref)
        return int(cand.data["id"][cand.array.selected])

    def _allows(self, token: int) -> bool:
        one = self._one
        one.data[0] = (token, 0.0, 0.0)
        one.array.size = 1
        one.array.selected = -1
        llama_cpp.llama_sampler_apply(self._grammar, one.ref)
        return bool(np.isfinite(one.data["logit"][0]))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar is not None:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None
