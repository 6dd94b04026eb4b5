"""Ollama's error shape, `{"error": "..."}` with the status, for every /api/ route; and its
streams: newline-delimited JSON, where a failure midway is one more line, `{"error": ...}`
(what Ollama's clients raise on)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from server.api.errors import APIError, api_error, errors_answered_with
from server.api.sse import dumps


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)


# Any error of the service layers, answered in Ollama's shape rather than OpenAI's.
ollama_errors = errors_answered_with(error_response)


def ndjson_response(lines: AsyncIterator[dict[str, Any]], on_close: Callable[[], None]) -> Response:
    async def body() -> AsyncIterator[str]:
        # Starlette cancels this generator when the client disconnects; `finally` then
        # tells the engine, which frees the request's sequence at its next step.
        try:
            async for line in lines:
                yield dumps(line) + "\n"
        except Exception as e:
            yield dumps({"error": api_error(e).message}) + "\n"
        finally:
            on_close()

    return StreamingResponse(body(), media_type="application/x-ndjson")
