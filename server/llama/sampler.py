"""llama.cpp's samplers, made and freed here: a chain in llama.cpp's own order (logit bias,
penalties, DRY, top-k, top-p, min-p, temperature, then a greedy pick or a seeded draw), a
grammar sampler, and the candidate arrays they work on.

Every value that sizes a llama.cpp allocation is bounded here by the context or the
vocabulary (DRY's window: 5e8 made llama.cpp allocate 2 GB), whatever the caller checked.
"""

from __future__ import annotations

import ctypes
import random
from dataclasses import dataclass, field

import llama_cpp
import numpy as np

from server.llama.context import LlamaContext
from server.llama.grammar import GrammarError, check_grammar

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

    @property
    def needs_chain(self) -> bool:
        """False when an argmax over the biased logits is the whole choice."""
        return not self.greedy or self.has_penalties or self.dry_multiplier > 0


def effective_bias(bias: float) -> float:
    return -np.inf if bias <= BAN_BIAS else bias


# llama_token_data as numpy sees it, so candidate arrays are filled without a Python loop.
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class Candidates:
    """A reusable llama_token_data_array of n tokens."""

    def __init__(self, n: int) -> None:
        self.data = np.empty(n, dtype=_TOKEN_DATA)
        self._ids = np.arange(n, dtype=np.int32)
        self.array = llama_cpp.llama_token_data_array(
            data=self.data.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=n,
            selected=-1,
            sorted=False,
        )
        self.ref = ctypes.byref(self.array)

    def fill(self, logits: np.ndarray) -> None:
        # Samplers reorder and shrink the array in place, so every field is rewritten.
        self.data["id"] = self._ids
        self.data["logit"] = logits
        self.data["p"] = 0.0
        self._reset(len(self.data))

    def one(self, token: int) -> None:
        """Hold just `token` (to ask a grammar whether it allows it)."""
        self.data[0] = (token, 0.0, 0.0)
        self._reset(1)

    def _reset(self, size: int) -> None:
        self.array.size = size
        self.array.selected = -1
        self.array.sorted = False

    @property
    def selected(self) -> int:
        return int(self.data["id"][self.array.selected])


class Sampler:
    """One llama_sampler, freed exactly once."""

    def __init__(self, ptr: llama_cpp.llama_sampler_p) -> None:
        self._ptr = ptr

    def apply(self, candidates: Candidates) -> None:
        llama_cpp.llama_sampler_apply(self._ptr, candidates.ref)

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self._ptr, token)

    def sample(self, ctx: LlamaContext, batch_index: int) -> int:
        """Choose from a logits row and accept the choice (llama_sampler_sample)."""
        return llama_cpp.llama_sampler_sample(self._ptr, ctx.ptr, batch_index)

    def close(self) -> None:
        if self._ptr is not None:
            llama_cpp.llama_sampler_free(self._ptr)
            self._ptr = None


def grammar_sampler(vocab: llama_cpp.llama_vocab_p, grammar: str) -> Sampler:
    """A grammar sampler; GrammarError when the GBNF is over a limit or does not parse."""
    check_grammar(grammar, llama_cpp.llama_vocab_n_tokens(vocab))
    ptr = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not ptr:
        # (llama.cpp prints its reason to stderr, out of reach here.)
        raise GrammarError(
            "llama.cpp could not parse it as GBNF with a 'root' rule; a group repeated many "
            "times, such as (...){1,500}, is a common cause: llama.cpp expands each repeat "
            "into rules and refuses past ~2000 of them"
        )
    return Sampler(ptr)


def chain_sampler(
    params: SamplingParams,
    bias: dict[int, float],
    vocab: llama_cpp.llama_vocab_p,
    context_length: int,
) -> Sampler:
    """The sampler chain for params (bias: token -> added logit, -inf bans)."""
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    ptr = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    chain = Sampler(ptr)  # owned (and freed) from here on, even if a step below fails
    try:
        _fill_chain(ptr, params, bias, vocab, n_vocab, context_length)
    except BaseException:
        chain.close()
        raise
    return chain


def _fill_chain(
    chain: llama_cpp.llama_sampler_p,
    params: SamplingParams,
    bias: dict[int, float],
    vocab: llama_cpp.llama_vocab_p,
    n_vocab: int,
    context_length: int,
) -> None:
    add = llama_cpp.llama_sampler_chain_add
    if bias:
        if any(not 0 <= t < n_vocab for t in bias):
            raise ValueError("logit_bias names a token outside the vocabulary")
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
                min(last_n, context_length),
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            ),
        )
    if params.dry_multiplier > 0:
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
        return
    if params.top_k > 0:
        add(chain, llama_cpp.llama_sampler_init_top_k(min(params.top_k, n_vocab)))
    if params.top_p < 1.0:
        add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
    add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
    seed = params.seed if params.seed is not None else random.getrandbits(32)
    add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
