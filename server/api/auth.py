"""The API key: with one set, every route needs `Authorization: Bearer <key>` (or, as
Anthropic's SDKs send it, `x-api-key: <key>`).

Two exceptions, neither of which shows anything of the user's: GET /health answers a bare
liveness status to anyone (its details need the key), and GET / serves the static chat
page, which asks for the key itself.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.error_shapes import shaped
from server.api.errors import APIError

OPEN_ROUTES = frozenset({("GET", "/"), ("GET", "/health")})


class APIKeyAuth:
    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.expected_key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        got = headers.get("authorization", "").encode("latin-1")
        got_key = headers.get("x-api-key", "").encode("latin-1")
        authenticated = hmac.compare_digest(got, self.expected) or (
            bool(got_key) and hmac.compare_digest(got_key, self.expected_key)
        )
        # Handlers of the open routes read it as request.state.authenticated.
        scope.setdefault("state", {})["authenticated"] = authenticated
        if scope["type"] == "websocket":
            if authenticated:
                await self.app(scope, receive, send)
            else:  # refused before the handshake: the client sees HTTP 403
                await send({"type": "websocket.close", "code": 1008, "reason": "invalid API key"})
            return
        if not authenticated and (scope["method"], scope["path"]) not in OPEN_ROUTES:
            error = APIError(401, "Incorrect API key provided.", code="invalid_api_key")
            await shaped(scope["path"], error)(scope, receive, send)
            return
        await self.app(scope, receive, send)
