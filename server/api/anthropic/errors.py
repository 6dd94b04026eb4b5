"""Anthropic's error shape, `{"type": "error", "error": {"type", "message"}}`, for the
Messages API routes, with the error types its SDKs map from the status."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.errors import APIError, api_error

Handler = Callable[[Request], Awaitable[Response]]

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_body(error: APIError) -> dict[str, Any]:
    kind = ERROR_TYPES.get(error.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error_body(error), status_code=error.status, headers=error.headers)


def anthropic_errors(handler: Handler) -> Handler:
    """Any error of the service layers, answered in Anthropic's shape."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as e:
            return error_response(api_error(e))

    return wrapped
