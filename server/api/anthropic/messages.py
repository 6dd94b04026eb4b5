"""POST /v1/messages (plain or streamed with Anthropic's event sequence) and
/v1/messages/count_tokens, over the same preparation, engine and prefix cache as
/v1/chat/completions.

Usage follows Anthropic's accounting: `input_tokens` are the prompt tokens computed for
this request, `cache_read_input_tokens` those the prefix cache already held (their sum is
the prompt); Hearth caches every prompt by itself, so `cache_creation_input_tokens` is 0.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.anthropic.errors import anthropic_errors, error_body
from server.api.anthropic.wire import CountTokensRequest, MessagesRequest
from server.api.body import read_json, validate_body
from server.api.errors import APIError
from server.api.openapi import documented
from server.api.sse import dumps, engine_error, sse_response
from server.async_engine import GenerationStream
from server.chat.generate import (
    ChoiceEnd,
    ChoiceResult,
    Failed,
    cancel_all,
    collect,
    events,
    start_streams,
)
from server.chat.prepare import PreparedChat, prepare_chat
from server.chat.tools import parse_answer
from server.engine.request import FinishReason
from server.ids import new_id
from server.model_pool import Lease, LoadedModel
from server.runtime import Runtime


@documented("Anthropic: create a message", body=MessagesRequest)
@anthropic_errors
async def create_message(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = validate_body(MessagesRequest, await read_json(request))
    lease = await runtime.models.acquire(req.model)
    with lease as model:
        return await _reply(request, model, lease, req)


async def _reply(
    request: Request, model: LoadedModel, lease: Lease, req: MessagesRequest
) -> Response:
    body = req.chat_request(model.model_id)
    prepared = await prepare_chat(model, body)
    streams = start_streams(
        model, body, [prepared.prompt], [prepared.max_tokens], None, prepared.grammar
    )
    message = {"id": new_id("msg_"), "type": "message", "role": "assistant", "model": req.model}
    if req.stream:
        events = stream_events(streams, prepared, message)
        release = lease.hand_over()
        return sse_response(
            events, on_close=lambda: (cancel_all(streams), release()), on_error=error_events
        )
    (result,) = await collect(streams, request.is_disconnected)
    text, calls = parse_answer(result.text) if prepared.tools else (result.text, None)
    blocks = [{"type": "text", "text": text}] if text else []
    blocks += [tool_use_block(call) for call in calls or []]
    body_out = {
        **message,
        "content": blocks or [{"type": "text", "text": ""}],
        "stop_reason": stop_reason(result, bool(calls)),
        "stop_sequence": result.stop_sequence,
        "usage": usage(result),
    }
    cited = prepared.citations()
    if cited is not None:
        body_out["citations"] = cited  # Hearth extension: the sources the prompt carried
    return JSONResponse(body_out)


@documented("Anthropic: count the tokens of a message", body=CountTokensRequest)
@anthropic_errors
async def count_tokens(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = validate_body(CountTokensRequest, await read_json(request))
    with await runtime.models.acquire(req.model) as model:
        prepared = await prepare_chat(model, req.to_openai(model.model_id))
    return JSONResponse({"input_tokens": len(prepared.prompt)})


def tool_use_block(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call (server/chat/tools.py) as Anthropic's tool_use block."""
    fn = call["function"]
    return {
        "type": "tool_use",
        "id": "toolu_" + call["id"].removeprefix("call_"),
        "name": fn["name"],
        "input": _input_object(fn["arguments"]),
    }


def _input_object(arguments: str) -> dict[str, Any]:
    # Arguments cut short by max_tokens are not JSON (stop_reason says max_tokens); an
    # Anthropic client expects an object, so it gets an empty one.
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def stop_reason(result: ChoiceResult, called: bool) -> str:
    if result.finish_reason is FinishReason.LENGTH:
        return "max_tokens"  # also for a tool call cut short
    if called:
        return "tool_use"
    return "stop_sequence" if result.stop_sequence is not None else "end_turn"


def usage(result: ChoiceResult) -> dict[str, int]:
    return {
        "input_tokens": result.prompt_tokens - result.cached_tokens,
        "output_tokens": result.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": result.cached_tokens,
    }


def _event(name: str, **data: Any) -> dict[str, str]:
    return {"event": name, "data": dumps({"type": name, **data})}


def error_events(error: APIError) -> list[dict[str, str]]:
    return [{"event": "error", "data": dumps(error_body(error))}]


async def stream_events(
    streams: list[GenerationStream], prepared: PreparedChat, message: dict[str, Any]
) -> AsyncIterator[dict[str, str]]:
    """message_start, ping, a text block as it streams, a tool_use block per call, then
    message_delta (stop reason, final usage) and message_stop."""
    start_usage = {
        "input_tokens": len(prepared.prompt),
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    yield _event(
        "message_start",
        message={
            **message,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        },
    )
    yield _event("ping")
    index = 0
    text_open = False
    result = ChoiceResult()
    calls: list[dict[str, Any]] | None = None
    async for event in events(streams, with_tools=prepared.tools is not None):
        if isinstance(event, Failed):
            for e in error_events(engine_error(event.message)):
                yield e
            return
        if event.text:
            if not text_open:
                block = {"type": "text", "text": ""}
                yield _event("content_block_start", index=index, content_block=block)
                text_open = True
            delta = {"type": "text_delta", "text": event.text}
            yield _event("content_block_delta", index=index, delta=delta)
        if isinstance(event, ChoiceEnd):
            result, calls = event.result, event.tool_calls
    if text_open or not calls:  # an empty answer is still one (empty) text block
        if not text_open:
            block = {"type": "text", "text": ""}
            yield _event("content_block_start", index=index, content_block=block)
        yield _event("content_block_stop", index=index)
        index += 1
    for call in calls or []:
        block = tool_use_block(call)
        yield _event("content_block_start", index=index, content_block={**block, "input": {}})
        delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        yield _event("content_block_delta", index=index, delta=delta)
        yield _event("content_block_stop", index=index)
        index += 1
    delta = {"stop_reason": stop_reason(result, bool(calls)), "stop_sequence": result.stop_sequence}
    extra: dict[str, Any] = {}
    cited = prepared.citations()
    if cited is not None:
        extra["citations"] = cited
    yield _event("message_delta", delta=delta, usage=usage(result), **extra)
    yield _event("message_stop")
