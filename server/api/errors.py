"""Errors in OpenAI's wire shape: {"error": {"message", "type", "param", "code"}}.

The one place where the service layers' errors meet HTTP: `api_error` maps each domain
error (server/errors.py) and each engine's own (busy, gone, context too long) to a status
and that shape; `HANDLERS` are the handlers for them (error_shapes.py adds Starlette's own
HTTP errors and registers both), and the SSE streams use the same mapping for an error
event.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.engine.embedder import EmbedderBusy, EmbedderError
from server.engine.engine import ContextLengthExceeded, EngineBusy, EngineDead
from server.errors import (
    ClientGone,
    FeatureDisabled,
    GenerationFailed,
    InvalidRequest,
    NotFound,
    RequestError,
    Unavailable,
)

logger = logging.getLogger("hearth.api")


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def server_busy(reason: str) -> APIError:
    return APIError(
        429,
        f"The server is busy: {reason}. Please retry shortly.",
        type="rate_limit_error",
        code="server_busy",
        headers={"Retry-After": "1"},
    )


def unavailable(reason: str) -> APIError:
    return APIError(
        503, f"The server cannot serve this now: {reason}.", type="server_error", code="unavailable"
    )


# pydantic puts the member of a union that failed into `loc` ("stop", "str"); a client
# only needs the field's own path.
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "literal"}


def _param_path(loc: tuple[int | str, ...]) -> str | None:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif "[" in item or item.lower() in _TYPE_TAGS:
            break
        else:
            parts.append(item)
    return ".".join(parts) or None


def from_validation_error(error: ValidationError) -> APIError:
    """The first problem pydantic found, named the way OpenAI names it (messages.[0].role)."""
    first = error.errors()[0]
    param = _param_path(first["loc"])
    message = first["msg"]
    if first["type"] == "missing":
        message = f"Missing required parameter: '{param}'."
    elif param:
        message = f"Invalid value for '{param}': {message}"
    code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
    return APIError(400, message, param=param, code=code)


def api_error(exc: Exception) -> APIError:
    """What a client is told about exc (500 for anything not foreseen)."""
    match exc:
        case APIError():
            return exc
        case ValidationError():  # a request another API's fields were turned into
            return from_validation_error(exc)
        case InvalidRequest():
            return APIError(400, exc.message, param=exc.param, code=exc.code)
        case NotFound():
            return APIError(404, exc.message, param=exc.param, code=exc.code)
        case FeatureDisabled() | Unavailable():
            return APIError(503, exc.message, type="server_error", code=exc.code)
        case ContextLengthExceeded():
            return APIError(400, str(exc), param="messages", code="context_length_exceeded")
        case EngineBusy() | EmbedderBusy():
            return server_busy(str(exc))
        case EngineDead() | EmbedderError():
            return unavailable(str(exc))
        case GenerationFailed():
            return APIError(500, str(exc), type="server_error", code="server_error")
        case ClientGone():
            logger.info("client disconnected before its answer was complete; cancelled it")
            # nginx's "client closed request": nobody reads it.
            return APIError(499, "The client closed the connection.", code="client_closed")
    logger.error("unhandled error", exc_info=exc)
    return APIError(
        500, "The server had an error while processing your request.", type="server_error"
    )


Handler = Callable[[Request], Awaitable[Response]]


def errors_answered_with(render: Callable[[APIError], Response]) -> Callable[[Handler], Handler]:
    """A handler decorator for the other APIs (Ollama's, Anthropic's): any error of the
    service layers, mapped as above, answered in the shape `render` gives it."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as e:
                return render(api_error(e))

        return wrapped

    return decorate


async def handle_error(request: Request, exc: Exception) -> Response:
    return api_error(exc).response()


# Exception class -> handler, as Starlette takes them. Exception itself is the catch-all
# (Starlette's outermost middleware answers it).
HANDLERS = {
    **dict.fromkeys(
        (
            APIError,
            RequestError,
            ContextLengthExceeded,
            EngineBusy,
            EngineDead,
            EmbedderError,
            GenerationFailed,
            ClientGone,
        ),
        handle_error,
    ),
    Exception: handle_error,
}
