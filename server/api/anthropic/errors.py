"""Anthropic's error shape, `{"type": "error", "error": {"type", "message"}}`, for the
Messages API routes, with the error types its SDKs map from the status."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from server.api.errors import APIError, errors_answered_with

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


# Any error of the service layers, answered in Anthropic's shape.
anthropic_errors = errors_answered_with(error_response)
