"""Server-sent events the way OpenAI sends them: `data: <json>\n\n`, ending in `data: [DONE]`.

A stream always ends properly: when generating fails midway (the engine reports an error,
or formatting a chunk raises), the client gets an error event and then the stream's normal
end, never a connection cut without one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from sse_starlette.sse import EventSourceResponse

from server.api.errors import APIError, api_error

DONE = "[DONE]"


def dumps(body: Any) -> str:
    """Compact JSON, as OpenAI's stream carries it; non-ASCII text stays as is."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def engine_error(message: str) -> APIError:
    return APIError(500, message, type="server_error", code="server_error")


def error_events(error: APIError) -> list[Any]:
    """How a chat or text completion stream ends on an error: the error object, then
    [DONE] (what OpenAI's clients raise on and what llama-server sends)."""
    return [dumps(error.body()), DONE]


async def _closing(
    events: AsyncIterator[Any],
    on_close: Callable[[], None],
    on_error: Callable[[APIError], list[Any]],
) -> AsyncIterator[Any]:
    # sse-starlette cancels this generator when the client disconnects; `finally` then
    # tells the engine, which frees the request's sequence at its next step.
    try:
        async for event in events:
            yield event
    except Exception as e:
        for event in on_error(api_error(e)):
            yield event
    finally:
        on_close()


def sse_response(
    events: AsyncIterator[Any],
    on_close: Callable[[], None],
    on_error: Callable[[APIError], list[Any]] = error_events,
) -> EventSourceResponse:
    return EventSourceResponse(
        _closing(events, on_close, on_error),
        sep="\n",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
