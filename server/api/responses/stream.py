"""The typed stream events of a streamed response (`event: <type>` + JSON data), formatted
from the chat service's one streaming loop (server/chat/generate.events)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from sse_starlette.sse import ServerSentEvent

from server.api.errors import APIError
from server.api.responses.output import (
    ResponseBuilder,
    file_citations,
    file_search_item,
    function_call_item,
    message_item,
    status_of,
)
from server.api.sse import dumps
from server.async_engine import GenerationStream
from server.chat.generate import ChoiceEnd, Failed, events
from server.chat.prepare import PreparedChat
from server.ids import new_id


def error_events(error: APIError) -> list[ServerSentEvent]:
    """How a response stream ends on an error it could not number: one `error` event."""
    data = {"type": "error", "code": error.code or "server_error", "message": error.message}
    return [ServerSentEvent(data=dumps({**data, "param": error.param}), event="error")]


class _Events:
    """Numbered stream events (`event: <type>` + JSON data with the same type)."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> ServerSentEvent:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return ServerSentEvent(data=dumps(data), event=kind)


async def stream_events(
    builder: ResponseBuilder,
    streams: list[GenerationStream],
    prepared: PreparedChat,
    remember: Callable[[dict[str, Any]], None],
) -> AsyncIterator[ServerSentEvent]:
    event = _Events()
    output: list[dict[str, Any]] = []
    yield event("response.created", response=builder.body("in_progress", []))
    yield event("response.in_progress", response=builder.body("in_progress", []))
    if prepared.query is not None:
        item = file_search_item(prepared.query)
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
                part={"type": "output_text", "text": "", "annotations": []},
            ),
        ]

    async for out in events(streams, with_tools=prepared.tools is not None):
        if isinstance(out, Failed):
            error = {"code": "server_error", "message": out.message, "param": None}
            yield event("error", **error)
            return
        if out.text:
            if not opened:
                for e in open_message():
                    yield e
                opened = True
            text += out.text
            yield event(
                "response.output_text.delta",
                item_id=message_id,
                output_index=len(output),
                content_index=0,
                delta=out.text,
                logprobs=[],
            )
        if not isinstance(out, ChoiceEnd):
            continue
        if out.tool_calls:
            for call in out.tool_calls:
                item = function_call_item(call)
                index = len(output)
                yield event(
                    "response.output_item.added",
                    output_index=index,
                    item={**item, "arguments": "", "status": "in_progress"},
                )
                yield event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=item["arguments"],
                )
                yield event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
                yield event("response.output_item.done", output_index=index, item=item)
                output.append(item)
            status = "completed"
        else:
            if not opened:
                for e in open_message():
                    yield e
            status = status_of(out.result.finish_reason)
            annotations = file_citations(prepared.sources, len(text))
            item = message_item(message_id, text, status, annotations)
            index = len(output)
            yield event(
                "response.output_text.done",
                item_id=message_id,
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
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
