"""The typed stream events of a streamed response (`event: <type>` + JSON data)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from sse_starlette.sse import ServerSentEvent

from retrieval.store import Hit
from server.api.generation import ChoiceResult, merged
from server.api.responses.output import (
    ResponseBuilder,
    file_citations,
    file_search_item,
    function_call_item,
    message_item,
    new_id,
    status_of,
)
from server.api.sse import INTERNAL_ERROR, dumps
from server.api.tools import AnswerStream
from server.engine.request import FinishReason


def error_events(message: str | None) -> list[ServerSentEvent]:
    """How a response stream ends on an error it could not number: one `error` event."""
    data = {"type": "error", "code": "server_error", "message": message or INTERNAL_ERROR}
    return [ServerSentEvent(data=dumps({**data, "param": None}), event="error")]


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
    stream: Any,
    with_tools: bool,
    sources: list[Hit],
    query: str | None,
    remember: Callable[[dict[str, Any]], None],
) -> AsyncIterator[ServerSentEvent]:
    event = _Events()
    output: list[dict[str, Any]] = []
    yield event("response.created", response=builder.body("in_progress", []))
    yield event("response.in_progress", response=builder.body("in_progress", []))
    if query is not None:
        item = file_search_item(query)
        yield event(
            "response.output_item.added", output_index=0, item={**item, "status": "in_progress"}
        )
        yield event("response.output_item.done", output_index=0, item=item)
        output.append(item)

    answer = AnswerStream() if with_tools else None
    message_id = new_id("msg")
    text = ""
    opened = False
    result = ChoiceResult()

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

    async for _, out in merged([stream]):
        if out.finish_reason is FinishReason.ERROR:
            error = {"code": "server_error", "message": out.error or INTERNAL_ERROR}
            yield event("error", **error, param=None)
            return
        delta = answer.feed(out.text) if answer is not None else out.text
        if out.finished:
            result.add(out)
            if answer is not None:
                rest, calls = answer.finish()
                delta += rest
            else:
                calls = None
        else:
            calls = None
        if delta:
            if not opened:
                for e in open_message():
                    yield e
                opened = True
            text += delta
            yield event(
                "response.output_text.delta",
                item_id=message_id,
                output_index=len(output),
                content_index=0,
                delta=delta,
                logprobs=[],
            )
        if not out.finished:
            continue
        if calls:
            for call in calls:
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
            status = status_of(result.finish_reason)
            item = message_item(message_id, text, status, file_citations(sources, len(text)))
            part = item["content"][0]
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
                part=part,
            )
            yield event("response.output_item.done", output_index=index, item=item)
            output.append(item)
        body = builder.body(status, output, result)
        remember(body)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        yield event(kind, response=body)
