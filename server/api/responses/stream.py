"""The typed stream events of a streamed response (`event: <type>` + JSON data, lines
ending in LF as the Open Responses specification and common parsers expect, then
`data: [DONE]`), formatted from the chat service's one streaming loop
(server/chat/generate.events). The same events go over the WebSocket mode, as messages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from sse_starlette.sse import ServerSentEvent

from server.api.errors import APIError
from server.api.responses.output import (
    LogprobFormat,
    ResponseBuilder,
    file_citations,
    file_search_item,
    function_call_item,
    function_call_items,
    message_item,
    status_of,
    text_part,
)
from server.api.sse import dumps
from server.async_engine import GenerationStream
from server.chat.generate import ChoiceEnd, CustomInputDelta, Failed, events
from server.chat.prepare import PreparedChat
from server.ids import new_id

# The stream's last line: the Open Responses specification ends every stream with it.
DONE = ServerSentEvent(data="[DONE]", sep="\n")


def error_fields(error: APIError) -> dict[str, Any]:
    """An error event's fields: nested as the Open Responses specification has them, and
    at the top as OpenAI's SDKs read them."""
    payload = {
        "type": error.type,
        "code": error.code or "server_error",
        "message": error.message,
        "param": error.param,
    }
    return {"error": payload, **{k: payload[k] for k in ("code", "message", "param")}}


def error_events(error: APIError) -> list[ServerSentEvent]:
    """How a response stream ends on an error it could not number: an `error` event."""
    data = {"type": "error", "sequence_number": 0, **error_fields(error)}
    return [ServerSentEvent(data=dumps(data), event="error", sep="\n"), DONE]


class _Events:
    """Numbered stream events (`event: <type>` + JSON data with the same type)."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> ServerSentEvent:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return ServerSentEvent(data=dumps(data), event=kind, sep="\n")


async def stream_events(
    builder: ResponseBuilder,
    streams: list[GenerationStream],
    prepared: PreparedChat,
    remember: Callable[[dict[str, Any]], None],
    logprobs: LogprobFormat | None = None,
    search_results: bool = False,
) -> AsyncIterator[ServerSentEvent]:
    event = _Events()
    output: list[dict[str, Any]] = []
    # Log-probabilities of the text's tokens, when asked for (not with tools: the text is
    # decoded from the JSON the tokens spell).
    with_logprobs = logprobs is not None and prepared.tools is None
    text_logprobs: list[dict[str, Any]] = []
    yield event("response.created", response=builder.body("in_progress", []))
    yield event("response.in_progress", response=builder.body("in_progress", []))
    if prepared.query is not None:
        item = file_search_item(prepared.query, prepared.sources if search_results else None)
        yield event(
            "response.output_item.added", output_index=0, item={**item, "status": "in_progress"}
        )
        yield event("response.output_item.done", output_index=0, item=item)
        output.append(item)

    message_id = new_id("msg_")
    text = ""
    opened = False

    def open_message() -> list[ServerSentEvent]:
        index = len(output)
        return [
            event(
                "response.output_item.added",
                output_index=index,
                item={**message_item(message_id, "", "in_progress", []), "content": []},
            ),
            event(
                "response.content_part.added",
                item_id=message_id,
                output_index=index,
                content_index=0,
                part=text_part("", []),
            ),
        ]

    # A custom tool call's item, announced while its input was being written (by call id).
    calling: dict[str, dict[str, Any]] = {}
    async for out in events(streams, with_tools=prepared.tools is not None, custom_input=True):
        if isinstance(out, CustomInputDelta):
            item = calling.get(out.call["id"])
            if item is None:
                item = calling[out.call["id"]] = function_call_item(out.call, "in_progress")
                yield event("response.output_item.added", output_index=len(output), item=item)
            if out.delta:
                yield event(
                    "response.custom_tool_call_input.delta",
                    item_id=item["id"],
                    output_index=len(output),
                    delta=out.delta,
                )
            continue
        if isinstance(out, Failed):
            error = APIError(500, out.message, type="server_error", code="server_error")
            yield event("error", **error_fields(error))
            failed = {"code": "server_error", "message": out.message}
            yield event("response.failed", response=builder.body("failed", output, error=failed))
            yield DONE
            return
        if out.text:
            if not opened:
                for e in open_message():
                    yield e
                opened = True
            text += out.text
            delta_logprobs = logprobs(out.logprobs) if with_logprobs and logprobs else []
            text_logprobs += delta_logprobs
            yield event(
                "response.output_text.delta",
                item_id=message_id,
                output_index=len(output),
                content_index=0,
                delta=out.text,
                logprobs=delta_logprobs,
            )
        if not isinstance(out, ChoiceEnd):
            continue
        if out.tool_calls:
            for item in function_call_items(out.tool_calls, out.result.finish_reason):
                index = len(output)
                # A function call's arguments, or a custom tool call's input.
                field, kind = (
                    ("input", "custom_tool_call_input")
                    if item["type"] == "custom_tool_call"
                    else ("arguments", "function_call_arguments")
                )
                announced = calling.get(item["call_id"])
                if announced is not None:  # its input went out as it was written
                    item["id"] = announced["id"]
                else:
                    yield event(
                        "response.output_item.added",
                        output_index=index,
                        item={**item, field: "", "status": "in_progress"},
                    )
                    yield event(
                        f"response.{kind}.delta",
                        item_id=item["id"],
                        output_index=index,
                        delta=item[field],
                    )
                done = {"name": item["name"]} if field == "arguments" else {}
                yield event(
                    f"response.{kind}.done",
                    item_id=item["id"],
                    output_index=index,
                    **done,
                    **{field: item[field]},
                )
                yield event("response.output_item.done", output_index=index, item=item)
                output.append(item)
            status = status_of(out.result.finish_reason)
        else:
            if not opened:
                for e in open_message():
                    yield e
            status = status_of(out.result.finish_reason)
            annotations = file_citations(prepared.sources, len(text))
            item = message_item(message_id, text, status, annotations, text_logprobs)
            index = len(output)
            yield event(
                "response.output_text.done",
                item_id=message_id,
                output_index=index,
                content_index=0,
                text=text,
                logprobs=text_logprobs,
            )
            yield event(
                "response.content_part.done",
                item_id=message_id,
                output_index=index,
                content_index=0,
                part=item["content"][0],
            )
            yield event("response.output_item.done", output_index=index, item=item)
            output.append(item)
        body = builder.body(status, output, out.result)
        remember(body)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        yield event(kind, response=body)
    yield DONE
