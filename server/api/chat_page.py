"""GET /: a small chat page over the server's own API, so `make serve` gives something to
open in a browser (llama-server ships one too). One static file, no assets from the net."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import HTMLResponse

from server.api.openapi import documented


@cache
def _page() -> str:
    return (files("server.api") / "static" / "chat.html").read_text(encoding="utf-8")


@documented("The built-in chat page", returns="text/html")
async def chat_page(request: Request) -> HTMLResponse:
    return HTMLResponse(_page())
