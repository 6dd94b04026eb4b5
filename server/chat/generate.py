"""Running prepared requests on the engine: start the streams (n per prompt), merge their
outputs, and turn them into one sequence of events that every API formats its own way
(chat chunks, completion chunks, Responses events), or collect them whole.

The events carry what used to be repeated in each API: text as it may be shown (a
tools answer decoded from its JSON as it streams), the log-probabilities of exactly the
tokens whose text it is (held-back text keeps its logprobs waiting), and each choice's
result and tool calls at its end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from server.async_engine import GenerationStream
from server.chat.deps import ChatRuntime
from server.chat.requests import SamplingFields
from server.chat.tools import AnswerStream
from server.engine.logprobs import TokenLogprob
from server.engine.request import FinishReason, GenerationOutput
from server.errors import ClientGone, GenerationFailed, InvalidRequest
from server.llama.sampler import SamplingParams

# How often a non-streaming request checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.5


def sampling_params(
    body: SamplingFields, runtime: ChatRuntime, choice: int, grammar: str | None = None
) -> SamplingParams:
    bias: dict[int, float] = {}
    for key, value in (body.logit_bias or {}).items():
        token = int(key)
        if not runtime.model.is_valid_token(token):
            raise InvalidRequest(
                f"logit_bias names token {token}, but the vocabulary has "
                f"{runtime.model.n_vocab} tokens.",
                param="logit_bias",
            )
        bias[token] = value
    # n > 1 with a seed: each choice gets its own stream of randomness, reproducibly.
    seed = None if body.seed is None else body.seed + choice
    return SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        seed=seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repeat_penalty=body.repeat_penalty,
        logit_bias=bias,
        grammar=grammar,
        dry_multiplier=body.dry_multiplier,
        dry_base=body.dry_base,
        dry_allowed_length=body.dry_allowed_length,
        dry_penalty_last_n=body.dry_penalty_last_n,
        **(
            {"dry_sequence_breakers": tuple(body.dry_sequence_breakers)}
            if body.dry_sequence_breakers is not None
            else {}
        ),
    )


def max_tokens_for(runtime: ChatRuntime, requested: int | None, n_prompt: int) -> int:
    if requested is not None:
        return requested
    room = runtime.engine.context_length - n_prompt
    default = runtime.settings.engine.default_max_tokens
    return max(1, min(default, room) if default else room)


def start_streams(
    runtime: ChatRuntime,
    body: SamplingFields,
    prompts: list[list[int]],
    max_tokens: list[int],
    logprobs: int | None = None,
    grammar: str | None = None,
    prompt_logprobs: int | None = None,
    prediction: list[int] | None = None,
) -> list[GenerationStream]:
    """n streams per prompt, choice index = prompt index * n + j; all or none are queued
    (the engine's EngineBusy, EngineDead or ContextLengthExceeded otherwise)."""
    max_choices = runtime.settings.server.max_choices_per_request
    if len(prompts) * body.n > max_choices:
        raise InvalidRequest(
            f"This request asks for {len(prompts) * body.n} completions ({len(prompts)} "
            f"prompts x n={body.n}); the limit is {max_choices} per request.",
            param="n" if len(prompts) == 1 else "prompt",
        )
    streams: list[GenerationStream] = []
    try:
        for p, (tokens, limit) in enumerate(zip(prompts, max_tokens, strict=True)):
            for j in range(body.n):
                streams.append(
                    GenerationStream(
                        runtime.engine,
                        tokens,
                        limit,
                        sampling_params(body, runtime, p * body.n + j, grammar),
                        body.stop_list(),
                        ignore_eos=body.ignore_eos,
                        logprobs=logprobs,
                        prompt_logprobs=prompt_logprobs,
                        speculative=body.speculative,
                        prediction=prediction,
                    )
                )
    except BaseException:
        cancel_all(streams)
        raise
    return streams


def cancel_all(streams: list[GenerationStream]) -> None:
    for stream in streams:
        stream.cancel()


async def merged(streams: list[GenerationStream]) -> AsyncIterator[tuple[int, GenerationOutput]]:
    """Outputs of several streams as they arrive, tagged with the stream's index."""
    if len(streams) == 1:
        async for output in streams[0]:
            yield 0, output
        return
    queue: asyncio.Queue[tuple[int, GenerationOutput]] = asyncio.Queue()

    async def pump(index: int, stream: GenerationStream) -> None:
        async for output in stream:
            await queue.put((index, output))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, output = await queue.get()
            if output.finished:
                remaining -= 1
            yield index, output
    finally:
        for task in tasks:
            task.cancel()


@dataclass
class ChoiceResult:
    text: str = ""
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_written_tokens: int = 0
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None
    # When the first token and the end arrived here (time.monotonic()): the prompt's and the
    # answer's durations that Ollama's API reports.
    first_token_at: float | None = None
    finished_at: float | None = None
    stop_sequence: str | None = None  # the stop string that ended it, if one did

    def add(self, output: GenerationOutput) -> None:
        now = time.monotonic()
        if self.first_token_at is None and output.token_ids:
            self.first_token_at = now
        if output.finished:
            self.finished_at = now
            self.stop_sequence = output.stop_sequence
        self.text += output.text
        self.token_ids.extend(output.token_ids)
        if output.logprobs:
            self.logprobs.extend(output.logprobs)
        if output.prompt_logprobs is not None:
            self.prompt_logprobs = output.prompt_logprobs
        if output.finished:
            self.finish_reason = output.finish_reason
            self.prompt_tokens = output.prompt_tokens
            self.completion_tokens = output.completion_tokens
            self.cached_tokens = output.cached_tokens
            self.cache_written_tokens = output.cache_written_tokens
            self.accepted_prediction_tokens = output.accepted_prediction_tokens
            self.rejected_prediction_tokens = output.rejected_prediction_tokens


async def collect(
    streams: list[GenerationStream], client_gone: Callable[[], Awaitable[bool]]
) -> list[ChoiceResult]:
    """Run streams to the end (GenerationFailed if the engine fails one); a client that
    hangs up (client_gone) cancels them."""
    results = [ChoiceResult() for _ in streams]

    async def run() -> None:
        async for index, output in merged(streams):
            if output.finish_reason is FinishReason.ERROR:
                raise GenerationFailed(output.error or "The engine failed on this request.")
            results[index].add(output)

    task = asyncio.create_task(run())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                task.result()
                return results
            if await client_gone():
                task.cancel()
                raise ClientGone
    finally:
        cancel_all(streams)


# --- one streaming loop for every API ------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    """Text of one choice that may be shown now, with the logprobs of its tokens."""

    index: int
    text: str
    logprobs: list[TokenLogprob]


@dataclass(frozen=True)
class ChoiceEnd:
    """A choice is complete: its last text (may be empty), the whole result, and the tool
    calls it made (None: a plain answer)."""

    index: int
    text: str
    logprobs: list[TokenLogprob]
    result: ChoiceResult
    tool_calls: list[dict[str, Any]] | None

    @property
    def finish_reason(self) -> str:
        return finish_reason(self.result, self.tool_calls is not None)


def finish_reason(result: ChoiceResult, called: bool) -> str:
    """OpenAI's finish_reason: "tool_calls" for calls made, but "length" for calls cut
    short by max_tokens (their last arguments are incomplete JSON; a client must see it)."""
    if called and result.finish_reason is not FinishReason.LENGTH:
        return "tool_calls"
    return str(result.finish_reason)


@dataclass(frozen=True)
class Failed:
    """The engine failed; nothing more comes."""

    message: str


@dataclass(frozen=True)
class CustomInputDelta:
    """A custom tool call being written: the call (its input empty; its id is the one its
    ChoiceEnd gives) and the input written since the last one. Only to events() callers
    that ask (custom_input=True)."""

    index: int
    call: dict[str, Any]
    delta: str


Event = TextDelta | ChoiceEnd | Failed | CustomInputDelta


async def events(
    streams: list[GenerationStream], with_tools: bool = False, custom_input: bool = False
) -> AsyncIterator[Event]:
    results = [ChoiceResult() for _ in streams]
    # With tools the model writes JSON: answers are decoded from it as they stream, tool
    # calls come out whole when the choice ends.
    answers = [AnswerStream() for _ in streams] if with_tools else None
    opened: set[int] = set()  # choices whose custom call has been announced
    # Logprobs of tokens whose text is still held back go out with that text, later.
    pending: list[list[TokenLogprob]] = [[] for _ in streams]
    async for index, output in merged(streams):
        if output.finish_reason is FinishReason.ERROR:
            yield Failed(output.error or "The engine failed on this request.")
            return
        if output.logprobs:
            pending[index].extend(output.logprobs)
        results[index].add(output)
        text = output.text if answers is None else answers[index].feed(output.text)
        if custom_input and answers is not None:  # its last delta before its ChoiceEnd
            call, delta = answers[index].custom_input()
            if call is not None and (delta or index not in opened):
                opened.add(index)
                yield CustomInputDelta(index, call, delta)
        if not output.finished:
            if text:
                yield TextDelta(index, text, pending[index])
                pending[index] = []
            continue
        calls = None
        if answers is not None:
            rest, calls = answers[index].finish()
            text += rest
        yield ChoiceEnd(index, text, pending[index], results[index], calls)
        pending[index] = []
