"""What chat and text completions share: wire fields → engine requests, and running them."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from server.api.errors import APIError, bad_request, server_busy, unavailable
from server.api.schemas import SamplingFields
from server.async_engine import GenerationStream
from server.engine.engine import ContextLengthExceeded, EngineBusy, EngineDead
from server.engine.logprobs import TokenLogprob
from server.engine.request import FinishReason, GenerationOutput
from server.engine.sampling import SamplingParams
from server.runtime import Runtime

# How often a non-streaming request checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Envelope:
    """The fields every response and chunk of one completion carries, as OpenAI sends them."""

    id: str
    object: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def new(cls, id_prefix: str, object: str, model: str) -> Envelope:
        return cls(f"{id_prefix}-{secrets.token_urlsafe(18)}", object, model)

    def body(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }


def check_model(runtime: Runtime, model: str | None) -> str:
    """The model id to answer with; a name Hearth does not serve is a 404 as at OpenAI."""
    if model is None or model == runtime.model_id:
        return runtime.model_id
    raise APIError(
        404,
        f"The model '{model}' does not exist. This server serves '{runtime.model_id}'.",
        type="invalid_request_error",
        param="model",
        code="model_not_found",
    )


def sampling_params(
    body: SamplingFields, runtime: Runtime, choice: int, grammar: str | None = None
) -> SamplingParams:
    bias: dict[int, float] = {}
    for key, value in (body.logit_bias or {}).items():
        token = int(key)
        if not runtime.model.is_valid_token(token):
            raise bad_request(
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


def max_tokens_for(runtime: Runtime, requested: int | None, n_prompt: int) -> int:
    if requested is not None:
        return requested
    room = runtime.engine.context_length - n_prompt
    default = runtime.settings.engine.default_max_tokens
    return max(1, min(default, room) if default else room)


def start_streams(
    runtime: Runtime,
    body: SamplingFields,
    prompts: list[list[int]],
    max_tokens: list[int],
    logprobs: int | None = None,
    grammar: str | None = None,
    prompt_logprobs: int | None = None,
) -> list[GenerationStream]:
    """n streams per prompt, choice index = prompt index * n + j; all or none are queued."""
    max_choices = runtime.settings.server.max_choices_per_request
    if len(prompts) * body.n > max_choices:
        raise bad_request(
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
                    )
                )
    except ContextLengthExceeded as e:
        cancel_all(streams)
        raise bad_request(str(e), param="messages", code="context_length_exceeded") from None
    except EngineBusy as e:
        cancel_all(streams)
        raise server_busy(str(e)) from None
    except EngineDead as e:
        cancel_all(streams)
        raise unavailable(str(e)) from None
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
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None

    def add(self, output: GenerationOutput) -> None:
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


def engine_failure(output: GenerationOutput) -> APIError:
    return APIError(500, output.error or "The engine failed on this request.", type="server_error")


async def collect(request: Request, streams: list[GenerationStream]) -> list[ChoiceResult]:
    """Run streams to the end; a client that hangs up cancels them."""
    results = [ChoiceResult() for _ in streams]

    async def run() -> None:
        async for index, output in merged(streams):
            if output.finish_reason is FinishReason.ERROR:
                raise engine_failure(output)
            results[index].add(output)

    task = asyncio.create_task(run())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                task.result()
                return results
            if await request.is_disconnected():
                task.cancel()
                raise asyncio.CancelledError
    finally:
        cancel_all(streams)


def total_usage(results: list[ChoiceResult], n: int) -> dict[str, object]:
    # Each prompt is counted once however many choices it has, as OpenAI does.
    prompt = sum(r.prompt_tokens for r in results[::n])
    completion = sum(r.completion_tokens for r in results)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in results[::n])},
    }
