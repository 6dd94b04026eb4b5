"""Reading request bodies without trusting them: size limits, media type, JSON, strings.

Every byte of a body is counted as it arrives (a chunked upload without Content-Length
included), so no request can make the server buffer or spool more than its route allows.
JSON bodies must say they are JSON: a cross-origin page can send `text/plain` or a form
without asking the browser's permission first, but not `application/json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.error_shapes import shaped
from server.api.errors import APIError, from_validation_error

# Containers inside containers; real requests (tool schemas included) stay far below.
MAX_JSON_DEPTH = 64
# An upload's body is the file plus multipart boundaries and part headers.
MULTIPART_FRAMING = 64 << 10


class BodyTooLarge(APIError):
    def __init__(self, limit: int, upload: bool = False) -> None:
        if upload:  # what the Files API has always answered
            message, param, code = (
                f"File too large: the limit is {_size(limit)}.",
                "file",
                "file_too_large",
            )
        else:
            message = f"The request body is larger than this server accepts ({_size(limit)})."
            param, code = None, "request_too_large"
        # Closing the connection is what stops the client's upload: otherwise the server
        # would keep reading (and dropping) the rest to keep the connection alive.
        super().__init__(413, message, param=param, code=code, headers={"Connection": "close"})


def _size(n: int) -> str:
    return f"{n / (1 << 20):g} MiB" if n >= 1 << 20 else f"{n} bytes"


@dataclass(frozen=True)
class UploadPaths:
    """The routes that take a file: these paths, and any `<parts>{id}/parts` (a part of
    an upload in parts)."""

    exact: tuple[str, ...]
    parts: str = ""

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str):
            return False
        if path in self.exact:
            return True
        return bool(self.parts) and path.startswith(self.parts) and path.endswith("/parts")


class BodyLimit:
    """Stops reading a request body at its route's limit: uploads get `upload_limit`
    bytes (and room for the multipart framing), everything else `json_limit`."""

    def __init__(
        self, app: ASGIApp, json_limit: int, upload_limit: int, upload_paths: UploadPaths
    ) -> None:
        self.app = app
        self.json_limit = json_limit
        self.upload_limit = upload_limit
        self.upload_paths = upload_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "POST" and scope["path"] in self.upload_paths
        shown = self.upload_limit if upload else self.json_limit
        limit = shown + MULTIPART_FRAMING if upload else shown
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await shaped(scope["path"], BodyTooLarge(shown, upload))(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the handler's read, so the app answers it as a 413.
                    raise BodyTooLarge(shown, upload)
            return message

        await self.app(scope, counted, send)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object whose every string is valid Unicode; 4xx otherwise."""
    if not _is_json(request.headers.get("content-type", "")):
        raise APIError(
            415,
            "Send the request body as JSON with the header 'Content-Type: application/json'.",
            code="unsupported_media_type",
        )
    raw = await request.body()
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise APIError(
            400, f"We could not parse the JSON body of your request. ({e})", code="invalid_json"
        ) from None
    except RecursionError:
        raise _too_deep() from None
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    check_strings(body)
    return body


def _too_deep() -> APIError:
    return APIError(
        400,
        f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.",
        code="invalid_json",
    )


def check_strings(body: dict[str, Any]) -> None:
    """Every string (keys too) must encode as UTF-8: JSON escapes can spell lone
    surrogates ("\\ud800"), which Python keeps but llama.cpp and SQLite cannot take."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(body, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_JSON_DEPTH:
            raise _too_deep()
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, path)
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, i)) for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, path)


def _check_text(text: str, path: tuple[str | int, ...]) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        param = param_path(path)
        raise APIError(
            400,
            f"Invalid value for '{param}': the string is not valid Unicode (it contains a "
            "lone surrogate).",
            param=param,
            code="invalid_value",
        ) from None


def param_path(path: tuple[str | int, ...]) -> str:
    """A JSON path the way OpenAI names parameters: messages.[0].content."""
    return ".".join(f"[{p}]" if isinstance(p, int) else p for p in path) or "body"


Body = TypeVar("Body", bound=BaseModel)


def validate_body(model: type[Body], body: dict[str, object]) -> Body:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise from_validation_error(e) from None
