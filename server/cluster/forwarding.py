"""An HTTP request carried from the ingress to a replica, and answered there by Hearth's own
ASGI app: the cluster has no second implementation of the API, only this hand-over.

The ingress reads the request (method, path, headers, body) into a ForwardedRequest, which
also carries what the router needs (the prompt's block hashes, or the replica a stored
object lives on). The replica runs its app on it in-process and yields the response as it
comes: a ResponseStart, then the body's chunks, so a stream stays a stream. If the client
goes away, the ingress cancels the call, and the app sees `http.disconnect` as it would
from uvicorn (the engine then drops the request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message

# How long a cancelled request's handler may take to notice the disconnect and clean up
# before it is cancelled outright.
DISCONNECT_GRACE_SECONDS = 5.0


@dataclass
class ForwardedRequest:
    method: str
    path: str
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client: tuple[str, int] | None = None
    scheme: str = "http"
    # For the router: the prompt's chained block hashes (affinity.block_hashes), and the
    # replica (its Ray Serve unique id) that holds a stored object this request names.
    prefix_blocks: list[bytes] = field(default_factory=list)
    replica: str = ""


@dataclass(frozen=True)
class ResponseStart:
    status: int
    headers: list[tuple[bytes, bytes]]


def json_body(request: ForwardedRequest) -> dict[str, Any]:
    """The body as a JSON object, or {} when it is not one (the replica's app answers
    what is wrong with it; the router just has nothing to go on)."""
    content_type = dict(request.headers).get(b"content-type", b"")
    if request.method != "POST" or not request.body or b"json" not in content_type:
        return {}
    try:
        body = json.loads(request.body)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _scope(request: ForwardedRequest) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": request.path.encode(),
        "root_path": "",
        "query_string": request.query_string,
        "headers": request.headers,
        "client": request.client,
        "server": None,
    }


async def answer(
    app: ASGIApp, request: ForwardedRequest, extra_headers: list[tuple[bytes, bytes]]
) -> AsyncIterator[ResponseStart | bytes]:
    """Run `app` on the request; yield its ResponseStart (with extra_headers added), then
    each non-empty body chunk."""
    sent: asyncio.Queue[Message] = asyncio.Queue()
    disconnected = asyncio.Event()
    body_given = False

    async def receive() -> Message:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        await sent.put(message)

    async def run() -> None:
        try:
            await app(_scope(request), receive, send)
        finally:
            await sent.put({"type": "hearth.app_done"})

    task = asyncio.get_running_loop().create_task(run())
    started = False
    try:
        while True:
            message = await sent.get()
            kind = message["type"]
            if kind == "http.response.start":
                started = True
                yield ResponseStart(message["status"], [*message["headers"], *extra_headers])
            elif kind == "http.response.body":
                if message.get("body"):
                    yield bytes(message["body"])
                if not message.get("more_body", False):
                    break
            elif kind == "hearth.app_done":
                # The app ended without finishing its response (its own error handlers
                # answer every error, so this is a bug): say so in OpenAI's shape.
                error = task.exception() if task.done() and not task.cancelled() else None
                if not started:
                    body = json.dumps(
                        {
                            "error": {
                                "message": f"the replica failed: {error or 'no response'}",
                                "type": "server_error",
                                "param": None,
                                "code": None,
                            }
                        }
                    ).encode()
                    yield ResponseStart(
                        500, [(b"content-type", b"application/json"), *extra_headers]
                    )
                    yield body
                break
    finally:
        disconnected.set()
        if not task.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), DISCONNECT_GRACE_SECONDS)
            task.cancel()
