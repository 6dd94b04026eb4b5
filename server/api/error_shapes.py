"""Which shape an error takes depends on whose client asked: Ollama's `{"error": "..."}` on
/api/, Anthropic's `{"type": "error", "error": {...}}` on /v1/messages, OpenAI's
everywhere else. The handlers of each API answer in their own shape themselves; this is
for what answers before a handler runs (the key, body limits, the browser guard, unknown
paths)."""

from __future__ import annotations

from starlette.responses import JSONResponse

from server.api.anthropic.errors import error_response as anthropic_response
from server.api.errors import APIError
from server.api.ollama.errors import error_response as ollama_response


def shaped(path: str, error: APIError) -> JSONResponse:
    if path.startswith("/api/"):
        return ollama_response(error)
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return anthropic_response(error)
    return error.response()
