"""Which shape an error takes depends on whose client asked: Ollama's `{"error": "..."}` on
/api/, Anthropic's `{"type": "error", "error": {...}}` on /v1/messages, OpenAI's
everywhere else. The handlers of each API answer in their own shape themselves; this is
for what answers before a handler runs (the key, body limits, the browser guard, unknown
paths)."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.anthropic.errors import error_response as anthropic_response
from server.api.errors import HANDLERS as SERVICE_HANDLERS
from server.api.errors import APIError
from server.api.ollama.errors import error_response as ollama_response


def shaped(path: str, error: APIError) -> JSONResponse:
    if path.startswith("/api/"):
        return ollama_response(error)
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return anthropic_response(error)
    return error.response()


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = exc.detail if exc.status_code != 404 else f"Unknown path: {request.url.path}"
    error = APIError(exc.status_code, str(message), type=kind, headers=exc.headers)
    return shaped(request.url.path, error)


# What the app registers: Starlette's own HTTP errors in the path's shape, then the
# service layers' (server/api/errors.py).
HANDLERS = {HTTPException: handle_http_exception, **SERVICE_HANDLERS}
