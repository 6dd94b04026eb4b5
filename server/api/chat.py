"""POST /v1/chat/completions: parse, prepare and generate (server/chat/), format as OpenAI's
chat completion or its chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.body import read_json, validate_body
from server.api.envelope import Envelope, usage
from server.api.logprobs import chat_logprobs
from server.api.openapi import documented
from server.api.sse import DONE, dumps, engine_error, error_events, sse_response
from server.api.stored_completions import remember
from server.async_engine import GenerationStream
from server.chat.generate import (
    ChoiceEnd,
    ChoiceResult,
    Failed,
    TextDelta,
    cancel_all,
    collect,
    events,
    finish_reason,
    start_streams,
)
from server.chat.legacy_functions import (
    asked_legacy,
    legacy_finish_reason,
    legacy_message,
    upgrade,
)
from server.chat.prepare import PreparedChat, prepare_chat
from server.chat.requests import ChatCompletionRequest
from server.chat.tools import parse_answer
from server.model_pool import LoadedModel
from server.runtime import Runtime


@documented("Create a chat completion", body=ChatCompletionRequest)
async def chat_completions(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = upgrade(validate_body(ChatCompletionRequest, await read_json(request)))
    lease = await runtime.models.acquire(req.model)
    with lease as chat:
        prepared = await prepare_chat(chat, req)
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        streams = start_streams(
            chat,
            req,
            [prepared.prompt],
            [prepared.max_tokens],
            logprobs,
            prepared.grammar,
            prediction=prepared.prediction,
        )
        envelope = Envelope.new("chatcmpl-", "chat.completion", prepared.model_id)
        keep = (lambda body: remember(runtime, req, body)) if req.store else None
        if req.stream:
            chunks = stream_chunks(chat, streams, req, prepared, envelope, keep)
            release = lease.hand_over()
            return sse_response(chunks, on_close=lambda: (cancel_all(streams), release()))
        results = await collect(streams, request.is_disconnected)
        body = response_body(chat, results, req, prepared, envelope)
        if keep is not None:
            keep(body)
        return JSONResponse(body)


def response_body(
    runtime: LoadedModel,
    results: list[ChoiceResult],
    req: ChatCompletionRequest,
    prepared: PreparedChat,
    envelope: Envelope,
) -> dict[str, Any]:
    choices = []
    for i, r in enumerate(results):
        message: dict[str, Any] = {"role": "assistant", "content": r.text, "refusal": None}
        calls = None
        if prepared.tools is not None:
            content, calls = parse_answer(r.text)
            message["content"] = content
            if calls is not None:
                message["tool_calls"] = calls
        finish = finish_reason(r, calls is not None)
        if asked_legacy(req):
            message, finish = legacy_message(message), legacy_finish_reason(finish)
        logprobs = chat_logprobs(runtime.model, r.logprobs) if req.logprobs else None
        choices.append(
            {"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish}
        )
    body = envelope.body(choices, usage=usage(results, req.n))
    cited = prepared.citations()
    if cited is not None:
        body["citations"] = cited  # Hearth extension: the sources the prompt carried
    return body


async def stream_chunks(
    runtime: LoadedModel,
    streams: list[GenerationStream],
    req: ChatCompletionRequest,
    prepared: PreparedChat,
    envelope: Envelope,
    keep: Callable[[dict[str, Any]], None] | None = None,
) -> AsyncIterator[str]:
    chunks = replace(envelope, object="chat.completion.chunk")
    # With include_usage, OpenAI sends "usage": null on every chunk but the last.
    no_usage = {"usage": None} if req.include_usage else {}
    # With tools the content is decoded from JSON: its tokens' logprobs would not match.
    with_logprobs = req.logprobs and prepared.tools is None

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return dumps(chunks.body(choices, **{**no_usage, **extra}))

    def choice(
        index: int, delta: dict[str, Any], finish: str | None = None, lp: Any = None
    ) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}

    def content(event: TextDelta | ChoiceEnd) -> str:
        lp = chat_logprobs(runtime.model, event.logprobs) if with_logprobs else None
        return chunk([choice(event.index, {"content": event.text}, lp=lp)])

    for i in range(len(streams)):
        yield chunk([choice(i, {"role": "assistant", "content": ""})])
    results: list[ChoiceResult] = [ChoiceResult() for _ in streams]
    async for event in events(streams, with_tools=prepared.tools is not None):
        if isinstance(event, Failed):
            for line in error_events(engine_error(event.message)):
                yield line
            return
        if event.text:
            yield content(event)
        if isinstance(event, ChoiceEnd):
            results[event.index] = event.result
            finish = event.finish_reason
            if event.tool_calls is not None and asked_legacy(req):
                function_call = event.tool_calls[0]["function"]
                yield chunk([choice(event.index, {"function_call": function_call})])
                finish = legacy_finish_reason(finish)
            elif event.tool_calls is not None:
                deltas = [{"index": k, **call} for k, call in enumerate(event.tool_calls)]
                yield chunk([choice(event.index, {"tool_calls": deltas})])
            yield chunk([choice(event.index, {}, finish)])
    if keep is not None:  # stored as the same request without stream would have returned it
        keep(response_body(runtime, results, req, prepared, envelope))
    if req.include_usage:
        yield chunk([], usage=usage(results, req.n))
    cited = prepared.citations()
    if cited is not None:
        yield chunk([], citations=cited)
    yield DONE
