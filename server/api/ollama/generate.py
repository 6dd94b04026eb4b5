"""POST /api/chat and /api/generate: Ollama's requests run through the same preparation and
engine as /v1/chat/completions (wire.py turns one into the other); the answers come back
in Ollama's shape, streamed as NDJSON by default, with Ollama's timing fields.

Durations are nanoseconds, measured here: `prompt_eval_duration` from queueing to the
first token (the prompt's computation, and any wait for a free sequence), `eval_duration`
from there to the last. `load_duration` is 0: the model was loaded at start-up.
`prompt_eval_count` counts the whole prompt, prefix-cache hits included.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.body import read_json, validate_body
from server.api.errors import APIError
from server.api.ollama.catalog import find_model, iso_time
from server.api.ollama.errors import ndjson_response, ollama_errors
from server.api.ollama.wire import ChatRequest, GenerateRequest, parse_keep_alive
from server.api.openapi import documented
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
from server.chat.prepare import PreparedChat, prepare_chat, prepare_completion
from server.chat.requests import SamplingFields
from server.chat.tools import parse_answer
from server.engine.request import FinishReason
from server.model_pool import Lease, LoadedModel
from server.runtime import Runtime


@dataclass(frozen=True)
class Reply:
    """What every line of one answer shares, and how its last line is completed."""

    model: str  # the name the client asked for, echoed as Ollama does
    received: float  # time.monotonic() when the request arrived
    queued: float  # ... and when it went to the engine
    citations: list[dict[str, Any]] | None = None

    def line(self, **fields: Any) -> dict[str, Any]:
        return {"model": self.model, "created_at": iso_time(), **fields}

    def final(self, result: ChoiceResult, **fields: Any) -> dict[str, Any]:
        now = time.monotonic()
        first = result.first_token_at or result.finished_at or now
        end = result.finished_at or now
        body = self.line(
            **fields,
            done=True,
            done_reason="length" if result.finish_reason is FinishReason.LENGTH else "stop",
            total_duration=_ns(now - self.received),
            load_duration=0,
            prompt_eval_count=result.prompt_tokens,
            prompt_eval_duration=_ns(first - self.queued),
            eval_count=result.completion_tokens,
            eval_duration=_ns(end - first),
        )
        if self.citations is not None:
            body["citations"] = self.citations  # Hearth extension, as on /v1/chat/completions
        return body


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def ollama_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's tool calls (arguments a JSON string) -> Ollama's (arguments an object)."""
    out = []
    for index, call in enumerate(calls):
        fn = call["function"]
        try:
            arguments = json.loads(fn["arguments"])
        except (TypeError, ValueError):
            arguments = {}
        function = {"index": index, "name": fn["name"], "arguments": arguments}
        out.append({"id": call["id"], "function": function})
    return out


def _start(
    runtime: LoadedModel, body: SamplingFields, prompt: list[int], limit: int, grammar: str | None
) -> tuple[list[GenerationStream], float]:
    streams = start_streams(runtime, body, [prompt], [limit], None, grammar)
    return streams, time.monotonic()


@documented("Ollama: chat", body=ChatRequest, returns="application/x-ndjson")
@ollama_errors
async def chat(request: Request) -> Response:
    received = time.monotonic()
    runtime: Runtime = request.app.state.runtime
    req = validate_body(ChatRequest, await read_json(request))
    model = find_model(runtime, req.model, kind="chat")
    lease = await runtime.models.acquire(model.id)
    with lease as loaded:
        keep_alive(loaded, req.keep_alive)
        if not req.messages:  # how Ollama's clients load a model: nothing to answer
            reply = Reply(req.model, received, received)
            message = {"role": "assistant", "content": ""}
            return JSONResponse(reply.line(message=message, done=True, done_reason="load"))
        return await _chat(request, loaded, lease, req, received)


async def _chat(
    request: Request, runtime: LoadedModel, lease: Lease, req: ChatRequest, received: float
) -> Response:
    body = req.to_openai(runtime.model_id)
    prepared = await prepare_chat(runtime, body)
    streams, queued = _start(runtime, body, prepared.prompt, prepared.max_tokens, prepared.grammar)
    reply = Reply(req.model, received, queued, prepared.citations())
    if req.stream:
        release = lease.hand_over()
        lines = _chat_lines(streams, prepared, reply)
        return ndjson_response(lines, lambda: (cancel_all(streams), release()))
    (result,) = await collect(streams, request.is_disconnected)
    message: dict[str, Any] = {"role": "assistant", "content": result.text}
    if prepared.tools is not None:
        content, calls = parse_answer(result.text)
        message["content"] = content or ""
        if calls:
            message["tool_calls"] = ollama_tool_calls(calls)
    return JSONResponse(reply.final(result, message=message))


async def _chat_lines(
    streams: list[GenerationStream], prepared: PreparedChat, reply: Reply
) -> AsyncIterator[dict[str, Any]]:
    result = ChoiceResult()
    async for event in events(streams, with_tools=prepared.tools is not None):
        if isinstance(event, Failed):
            yield {"error": event.message}
            return
        if event.text:
            yield reply.line(message={"role": "assistant", "content": event.text}, done=False)
        if isinstance(event, ChoiceEnd):
            result = event.result
            if event.tool_calls:
                calls = ollama_tool_calls(event.tool_calls)
                message = {"role": "assistant", "content": "", "tool_calls": calls}
                yield reply.line(message=message, done=False)
    yield reply.final(result, message={"role": "assistant", "content": ""})


@documented("Ollama: generate", body=GenerateRequest, returns="application/x-ndjson")
@ollama_errors
async def generate(request: Request) -> Response:
    received = time.monotonic()
    runtime: Runtime = request.app.state.runtime
    req = validate_body(GenerateRequest, await read_json(request))
    model = find_model(runtime, req.model, kind="chat")
    req.check()
    if not req.prompt and not req.context:  # a load (or, with keep_alive 0, an unload)
        reply = Reply(req.model, received, received)
        if parse_keep_alive(req.keep_alive) == 0:
            await runtime.models.unload(model.id)
            return JSONResponse(reply.line(response="", done=True, done_reason="unload"))
        with await runtime.models.acquire(model.id) as loaded:
            keep_alive(loaded, req.keep_alive)
        return JSONResponse(reply.line(response="", done=True, done_reason="load"))
    lease = await runtime.models.acquire(model.id)
    with lease as loaded:
        keep_alive(loaded, req.keep_alive)
        return await _generate(request, loaded, lease, req, received)


async def _generate(
    request: Request, runtime: LoadedModel, lease: Lease, req: GenerateRequest, received: float
) -> Response:
    model_id = runtime.model_id
    prepared: PreparedChat | None = None
    if req.raw:
        completion = req.to_completion(model_id)
        body: SamplingFields = completion
        prepared_text = await prepare_completion(runtime, completion)
        prompt, grammar = prepared_text.prompts[0], prepared_text.grammar
    else:
        chat_body = req.to_chat(model_id)
        body = chat_body
        prepared = await prepare_chat(runtime, chat_body)
        prompt, grammar = prepared.prompt, prepared.grammar
    if req.context:
        prompt = _with_context(runtime, req.context, prompt)
        if prepared is not None:
            prepared = replace(prepared, prompt=prompt)
    limit = max_tokens_for(runtime, getattr(body, "max_tokens", None), len(prompt))
    streams, queued = _start(runtime, body, prompt, limit, grammar)
    cited = prepared.citations() if prepared is not None else None
    reply = Reply(req.model, received, queued, cited)
    if req.stream:
        release = lease.hand_over()
        lines = _generate_lines(streams, prompt, reply)
        return ndjson_response(lines, lambda: (cancel_all(streams), release()))
    (result,) = await collect(streams, request.is_disconnected)
    context = prompt + result.token_ids
    return JSONResponse(reply.final(result, response=result.text, context=context))


def keep_alive(loaded: LoadedModel, value: int | float | str | None) -> None:
    """A request's keep_alive sets how long its model stays loaded after it (as in Ollama,
    until another request sets it again)."""
    seconds = parse_keep_alive(value)
    if seconds is not None:
        loaded.keep_alive = seconds


def _with_context(runtime: LoadedModel, context: list[int], prompt: list[int]) -> list[int]:
    """The conversation so far (token ids an earlier answer returned), then this prompt."""
    bad = [t for t in context if not runtime.model.is_valid_token(t)]
    if bad:
        raise APIError(
            400,
            f"context has token {bad[0]}, outside the vocabulary (0..{runtime.model.n_vocab - 1})",
            param="context",
        )
    return list(context) + prompt


async def _generate_lines(
    streams: list[GenerationStream], prompt: list[int], reply: Reply
) -> AsyncIterator[dict[str, Any]]:
    result = ChoiceResult()
    async for event in events(streams):
        if isinstance(event, Failed):
            yield {"error": event.message}
            return
        if event.text:
            yield reply.line(response=event.text, done=False)
        if isinstance(event, ChoiceEnd):
            result = event.result
    yield reply.final(result, response="", context=prompt + result.token_ids)
