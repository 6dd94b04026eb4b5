"""What goes into the engine (GenerationRequest) and what comes out of it (GenerationOutput).

Plain data: no HTTP, no JSON, no asyncio. The caller supplies `emit`, a thread-safe
callback the engine thread calls with each output.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from server.engine.logprobs import TokenLogprob
from server.llama.sampler import SamplingParams


class FinishReason(StrEnum):
    STOP = "stop"  # end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens or the context is full
    CANCELLED = "cancelled"  # the client went away
    ERROR = "error"


@dataclass(slots=True)
class GenerationOutput:
    """One step's worth of news about one request."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    cache_written_tokens: int = 0  # prompt tokens computed here and kept for reuse
    error: str | None = None
    logprobs: list[TokenLogprob] | None = None  # one per token in token_ids, when asked
    # With the first generated token, when asked: one per prompt token after the first.
    prompt_logprobs: list[TokenLogprob] | None = None
    # The stop string that ended the output (finish_reason STOP), if one did.
    stop_sequence: str | None = None
    # With a prediction (the request's, on the last output): output tokens that followed
    # it, and prediction tokens that did not appear (OpenAI's usage fields of those names).
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


_ids = itertools.count(1)


@dataclass(eq=False)
class GenerationRequest:
    prompt_tokens: list[int]
    max_tokens: int
    emit: Callable[[GenerationOutput], None]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    # Report each sampled token's log-probability and this many alternatives (None: off).
    logprobs: int | None = None
    # The same for every prompt token after the first (what lm-eval's loglikelihood asks
    # with echo + logprobs). Such a prompt is computed in full, never served from the cache.
    prompt_logprobs: int | None = None
    # May the engine draft this request's tokens from its prompt (when drafting is on)?
    # Its output is the same either way; false opts one request out.
    speculative: bool = True
    # The output the client expects, as tokens (OpenAI's Predicted Outputs): drafted from
    # while the output follows it. The output is the same with or without it.
    prediction: list[int] | None = None
    id: int = field(default_factory=lambda: next(_ids))
    # Set from any thread; the engine notices it at its next step.
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def __post_init__(self) -> None:
        if self.sampling.grammar is not None:
            # A grammar decides where the output ends: it allows only end-of-generation
            # tokens once complete, so those cannot be banned.
            self.ignore_eos = False
