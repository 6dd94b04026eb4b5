"""What a web page in the user's browser may do with Hearth: by default, nothing.

Hearth listens on the machine where its user browses the web, and a browser lets any page
send requests to http://127.0.0.1. The defences, as Ollama has them:
- **Origin.** A request from a page whose origin is not allowed is refused with 403, not
  merely left without CORS headers: a "simple" cross-origin request (a form post, a
  text/plain fetch) is carried out by the server before the browser hides the answer.
  Allowed: pages served from loopback (localhost, 127.0.0.1, [::1], any port),
  `server.cors_origins`, and the server's own pages (same origin, e.g. the chat page
  reached by a LAN address). Subresource loads from other sites (`<img>`, `<script>`), which
  carry no Origin, are refused by their Sec-Fetch-Site header; following a link is not.
- **CORS** grants go to allowed origins only (Starlette's CORSMiddleware, placed inside).
- **Host** (DNS rebinding): while listening on loopback, a request must name this machine
  (an IP address, localhost, the hostname or `server.allowed_hosts`); a page whose own
  DNS name was pointed at 127.0.0.1 still sends that name, and is refused.
- `X-Content-Type-Options: nosniff` on every response, so a page cannot load an uploaded
  file as a script or style sheet.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.error_shapes import shaped
from server.api.errors import APIError
from server.settings import is_loopback

# Pages served from this machine, over http or https, on any port.
LOOPBACK_ORIGIN = (
    r"https?://(localhost|[a-z0-9.-]+\.localhost|127(\.\d{1,3}){3}|\[::1\])(:\d{1,5})?"
)
_LOOPBACK_ORIGIN = re.compile(LOOPBACK_ORIGIN)


class OriginPolicy:
    def __init__(self, extra_origins: Iterable[str]) -> None:
        origins = list(extra_origins)
        self.any = "*" in origins
        self.listed = frozenset(o.rstrip("/").lower() for o in origins if o != "*")

    def allows(self, origin: str) -> bool:
        origin = origin.lower()
        return self.any or origin in self.listed or bool(_LOOPBACK_ORIGIN.fullmatch(origin))

    def cors_options(self) -> dict[str, object]:
        """Starlette CORSMiddleware's arguments for exactly these origins."""
        return {
            "allow_origins": ["*"] if self.any else sorted(self.listed),
            "allow_origin_regex": LOOPBACK_ORIGIN,
            "allow_methods": ["*"],
            "allow_headers": ["*"],
            "max_age": 600,
        }


class HostPolicy:
    """Which Host headers name this machine; `None` hosts: any (not on loopback)."""

    def __init__(self, listen_host: str, allowed_hosts: Iterable[str]) -> None:
        allowed = {h.lower() for h in allowed_hosts}
        self.any = "*" in allowed or not is_loopback(listen_host)
        self.names = frozenset(allowed | {socket.gethostname().lower(), listen_host.lower()})

    def allows(self, host_header: str) -> bool:
        if self.any:
            return True
        name = _host_name(host_header)
        if is_loopback(name) or name in self.names:
            return True
        try:
            ipaddress.ip_address(name)  # a literal address cannot be a rebound DNS name
            return True
        except ValueError:
            return False


def _host_name(host_header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _same_origin(origin: str, host_header: str) -> bool:
    """A page served by this server itself (the chat page, reached by any name the Host
    check let through) calling its own API."""
    return urlsplit(origin).netloc.lower() == host_header.strip().lower() != ""


class BrowserGuard:
    def __init__(self, app: ASGIApp, origins: OriginPolicy, hosts: HostPolicy) -> None:
        self.app = app
        self.origins = origins
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # Browsers let any page open a WebSocket to any host (no CORS): the same
            # Host and Origin checks, before the handshake is accepted.
            refusal = self._refusal(Headers(scope=scope))
            if refusal is None:
                await self.app(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008, "reason": refusal.code})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(headers)
        if refusal is not None:
            await shaped(scope["path"], refusal)(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Content-Type-Options"] = "nosniff"
            await send(message)

        await self.app(scope, receive, send_nosniff)

    def _refusal(self, headers: Headers) -> APIError | None:
        if not self.hosts.allows(headers.get("host", "")):
            return APIError(
                403,
                "This server does not answer to that Host name. Reach it as localhost or "
                "by IP address, or add the name to server.allowed_hosts.",
                code="host_not_allowed",
            )
        origin = headers.get("origin")
        if origin is not None:
            if self.origins.allows(origin) or _same_origin(origin, headers.get("host", "")):
                return None
        elif headers.get("sec-fetch-site") != "cross-site" or (
            headers.get("sec-fetch-mode") == "navigate"
        ):
            return None
        return APIError(
            403,
            "Requests from this web page are not allowed. Add its origin to "
            "server.cors_origins to let it use this server.",
            code="origin_not_allowed",
        )
