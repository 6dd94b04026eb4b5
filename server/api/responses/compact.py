"""POST /v1/responses/compact: a long conversation made short for its next turn.

As OpenAI's endpoint does, the user's messages are kept as they were and everything else
(the assistant's answers, tool calls and their outputs, earlier summaries) is replaced by
one `compaction` item: here a summary the model writes of the whole conversation. Sending
the returned output as the next request's input (plus the new message) continues the
conversation from it; wire.py turns the compaction item back into a system message.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.body import read_json, validate_body
from server.api.errors import bad_request
from server.api.openapi import documented
from server.api.responses.handlers import conversation, fewest_to_drop
from server.api.responses.output import usage
from server.api.responses.wire import compaction_content, input_messages
from server.chat.generate import collect, start_streams
from server.chat.prepare import PreparedChat, prepare_chat
from server.chat.requests import ChatCompletionRequest
from server.ids import new_id
from server.model_pool import LoadedModel
from server.runtime import Runtime

# How long the summary may be, in tokens.
SUMMARY_TOKENS = 256
# Less room than this for the summary: the transcript's oldest lines go first.
SUMMARY_MIN_TOKENS = 64
INSTRUCTION = (
    "Summarize the conversation below for whoever continues it: who the user is, what "
    "they asked and were told, names, numbers and decisions, and what is still open. "
    "Write only the summary."
)


class CompactRequest(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"input": "Hi, I am Alice.", "model": "default"}]},
    )

    model: str | None = None
    input: str | list[dict[str, Any]] | None = None
    previous_response_id: str | None = None
    instructions: str | None = None


def _transcript(messages: list[dict[str, Any]]) -> str:
    lines = []
    for m in messages:
        if m.get("tool_calls"):
            calls = ", ".join(_said(c) for c in m["tool_calls"])
            lines.append(f"assistant called: {calls}")
        if m.get("content"):
            lines.append(f"{m['role']}: {m['content']}")
    return "\n".join(lines)


def _summary_chat(transcript: str) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {
            "messages": [
                {"role": "system", "content": INSTRUCTION},
                {"role": "user", "content": transcript},
            ],
            "max_completion_tokens": SUMMARY_TOKENS,
            "temperature": 0,
        }
    )


async def _fitting_summary(
    model: LoadedModel, transcript: str
) -> tuple[ChatCompletionRequest, PreparedChat]:
    """The summary request: a conversation longer than the context (what compaction is
    for) loses its oldest transcript lines, as few as leave room for SUMMARY_MIN_TOKENS of
    summary (found by bisection); the summary gets up to SUMMARY_TOKENS of the room left.
    Still too long with only the last line: the engine's context_length_exceeded."""
    room = model.engine.context_length
    lines = transcript.split("\n")
    tried: dict[int, tuple[ChatCompletionRequest, PreparedChat]] = {}

    async def without(k: int) -> tuple[ChatCompletionRequest, PreparedChat]:
        if k not in tried:
            text = "\n".join(lines[k:])
            chat = _summary_chat(f"(earlier turns left out)\n{text}" if k else text)
            tried[k] = (chat, await prepare_chat(model, chat))
        return tried[k]

    def fits(prepared: PreparedChat) -> bool:
        return len(prepared.prompt) + SUMMARY_MIN_TOKENS <= room

    cut = 0
    if not fits((await without(0))[1]):
        cut = await fewest_to_drop(len(lines) - 1, without, fits) or 0
    chat, prepared = await without(cut)
    limit = max(1, min(SUMMARY_TOKENS, room - len(prepared.prompt)))
    return chat, replace(prepared, max_tokens=limit)


def _said(call: dict[str, Any]) -> str:
    """A function call as name(arguments), a custom tool's call as name(input)."""
    if call.get("type") == "custom":
        return f"{call['custom']['name']}({call['custom']['input']})"
    return f"{call['function']['name']}({call['function']['arguments']})"


def _user_message(message: dict[str, Any]) -> dict[str, Any]:
    # An item of the compacted output, as OpenAI's schema has it: with its id and status.
    return {
        "type": "message",
        "id": new_id("msg_"),
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_text", "text": message["content"]}],
    }


@documented("Compact a conversation", body=CompactRequest)
async def compact_response(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = validate_body(CompactRequest, await read_json(request))
    items = conversation(runtime, req.previous_response_id)
    if isinstance(req.input, str):
        items = [*items, {"type": "message", "role": "user", "content": req.input}]
    elif req.input:
        items = [*items, *req.input]
    messages = input_messages(items)
    if req.instructions:
        messages.insert(0, {"role": "system", "content": req.instructions})
    if not messages:
        raise bad_request(
            "There is nothing to compact: give input or previous_response_id.", param="input"
        )
    lease = await runtime.models.acquire(req.model)
    with lease as model:
        chat, prepared = await _fitting_summary(model, _transcript(messages))
        streams = start_streams(model, chat, [prepared.prompt], [prepared.max_tokens])
        (result,) = await collect(streams, request.is_disconnected)
    summary = result.text.strip()
    kept = [_user_message(m) for m in messages if m["role"] == "user" and m.get("content")]
    compaction = {
        "id": new_id("cmp_"),
        "type": "compaction",
        "encrypted_content": compaction_content(summary),
    }
    return JSONResponse(
        {
            "id": new_id("resp_"),
            "object": "response.compaction",
            "created_at": int(time.time()),
            "output": [*kept, compaction],
            "usage": usage(result),
        }
    )
