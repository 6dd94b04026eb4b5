"""Server-sent events the way OpenAI sends them: `data: <json>\n\n`, ending in `data: [DONE]`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from sse_starlette.sse import EventSourceResponse

DONE = "[DONE]"


def dumps(body: Any) -> str:
    """Compact JSON, as OpenAI's stream carries it; non-ASCII text stays as is."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


async def _closing(events: AsyncIterator[Any], on_close: Callable[[], None]) -> AsyncIterator[Any]:
    # sse-starlette cancels this generator when the client disconnects; `finally` then
    # tells the engine, which frees the request's sequence at its next step.
    try:
        async for event in events:
            yield event
    finally:
        on_close()


def sse_response(events: AsyncIterator[Any], on_close: Callable[[], None]) -> EventSourceResponse:
    return EventSourceResponse(
        _closing(events, on_close),
        sep="\n",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
