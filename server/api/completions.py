"""POST /v1/completions (OpenAI's legacy text completions): parse, prepare and generate
(server/chat/), format as OpenAI's text completion or its chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.body import read_json, validate_body
from server.api.envelope import Envelope, usage
from server.api.logprobs import completion_logprobs, echo_logprobs
from server.api.openapi import documented
from server.api.sse import DONE, dumps, engine_error, error_events, sse_response
from server.async_engine import GenerationStream
from server.chat.generate import (
    ChoiceEnd,
    ChoiceResult,
    Failed,
    cancel_all,
    collect,
    events,
    max_tokens_for,
    start_streams,
)
from server.chat.prepare import PreparedCompletion, prepare_completion
from server.chat.requests import CompletionRequest
from server.engine.request import FinishReason
from server.model_pool import Lease, LoadedModel
from server.runtime import Runtime


@documented("Create a text completion", body=CompletionRequest)
async def completions(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = validate_body(CompletionRequest, await read_json(request))
    lease = await runtime.models.acquire(req.model)
    with lease as chat:
        return await complete(request, chat, req, lease)


async def complete(
    request: Request, runtime: LoadedModel, req: CompletionRequest, lease: Lease
) -> Response:
    prepared = await prepare_completion(runtime, req)
    envelope = Envelope.new("cmpl-", "text_completion", prepared.model_id)
    if req.echo and req.logprobs is not None:
        body = await scored_prompts(request, runtime, req, prepared, envelope)
        return JSONResponse(body)
    tokens, texts = prepared.prompts, prepared.texts
    if req.max_tokens == 0:  # only the prompt (with echo) and its usage, as OpenAI does
        results = [
            ChoiceResult(
                text=t if req.echo else "",
                finish_reason=FinishReason.LENGTH,
                prompt_tokens=len(ids),
            )
            for ids, t in zip(tokens, texts, strict=True)
            for _ in range(req.n)
        ]
        return JSONResponse(response_body(results, req.n, envelope))
    limits = [max_tokens_for(runtime, req.max_tokens, len(ids)) for ids in tokens]
    streams = start_streams(runtime, req, tokens, limits, req.logprobs, prepared.grammar)
    echoes = [t for t in texts for _ in range(req.n)] if req.echo else None
    if req.stream:
        chunks = stream_chunks(runtime, streams, req, echoes, envelope)
        release = lease.hand_over()
        return sse_response(chunks, on_close=lambda: (cancel_all(streams), release()))
    results = await collect(streams, request.is_disconnected)
    if echoes:
        for r, echo in zip(results, echoes, strict=True):
            r.text = echo + r.text
    body = response_body(results, req.n, envelope)
    if req.logprobs is not None:
        for choice, r in zip(body["choices"], results, strict=True):
            choice["logprobs"] = completion_logprobs(runtime.model, r.logprobs)
    return JSONResponse(body)


async def scored_prompts(
    request: Request,
    runtime: LoadedModel,
    req: CompletionRequest,
    prepared: PreparedCompletion,
    envelope: Envelope,
) -> dict[str, Any]:
    """echo + logprobs: every prompt token's log-probability, then the completion's (how
    lm-evaluation-harness scores a continuation). max_tokens 0 scores the prompt alone: the
    engine still samples one token, which is dropped."""
    assert req.logprobs is not None
    tokens = prepared.prompts
    limits = [max(1, max_tokens_for(runtime, req.max_tokens, len(ids))) for ids in tokens]
    streams = start_streams(
        runtime, req, tokens, limits, req.logprobs, prompt_logprobs=req.logprobs
    )
    results = await collect(streams, request.is_disconnected)
    prompts = [
        (ids, text) for ids, text in zip(tokens, prepared.texts, strict=True) for _ in range(req.n)
    ]
    for r, (_, text) in zip(results, prompts, strict=True):
        if req.max_tokens == 0:
            r.text, r.logprobs, r.completion_tokens = "", [], 0
            r.finish_reason = FinishReason.LENGTH
        r.text = text + r.text
    body = response_body(results, req.n, envelope)
    for choice, r, (ids, _) in zip(body["choices"], results, prompts, strict=True):
        choice["logprobs"] = echo_logprobs(
            runtime.model, ids[0], r.prompt_logprobs or [], r.logprobs
        )
    return body


def response_body(results: list[ChoiceResult], n: int, envelope: Envelope) -> dict[str, Any]:
    choices = [
        {"index": i, "text": r.text, "logprobs": None, "finish_reason": str(r.finish_reason)}
        for i, r in enumerate(results)
    ]
    return envelope.body(choices, usage=usage(results, n))


async def stream_chunks(
    runtime: LoadedModel,
    streams: list[GenerationStream],
    req: CompletionRequest,
    echoes: list[str] | None,
    envelope: Envelope,
) -> AsyncIterator[str]:
    # With include_usage, OpenAI sends "usage": null on every chunk but the last.
    no_usage = {"usage": None} if req.include_usage else {}

    def chunk(index: int | None, text: str = "", finish: str | None = None, lp: Any = None) -> str:
        choices = (
            []
            if index is None
            else [{"index": index, "text": text, "logprobs": lp, "finish_reason": finish}]
        )
        return dumps(envelope.body(choices, **no_usage))

    if echoes:
        for i, echo in enumerate(echoes):
            yield chunk(i, echo)
    results = [ChoiceResult() for _ in streams]  # for the usage chunk
    # Where each choice's text stands, for the logprobs' text offsets.
    offsets = [len(e) for e in echoes] if echoes else [0] * len(streams)
    async for event in events(streams):
        if isinstance(event, Failed):
            for line in error_events(engine_error(event.message)):
                yield line
            return
        lp = None
        if req.logprobs is not None:
            lp = completion_logprobs(runtime.model, event.logprobs, offsets[event.index])
        offsets[event.index] += len(event.text)
        finish = None
        if isinstance(event, ChoiceEnd):
            results[event.index] = event.result
            finish = event.finish_reason
        yield chunk(event.index, event.text, finish, lp)
    if req.include_usage:
        yield dumps(envelope.body([], usage=usage(results, req.n)))
    yield DONE
