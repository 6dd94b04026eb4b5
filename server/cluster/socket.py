"""The Responses API's WebSocket mode through the cluster's ingress.

The ingress keeps the client's connection and its protocol (server/api/responses/
websocket.py's loop); each `response.create` on it becomes a streamed POST /v1/responses
forwarded like any other request, so the router places it by its prompt, or on the replica
holding its `previous_response_id`, and one connection's responses may be made by
different replicas. The replica's SSE events are relayed as one message each; an error
answer becomes an `error` event, as on a single server. A client that leaves mid-answer
cancels the forwarded call, which frees the replica's sequence.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

from starlette.websockets import WebSocket

from server.api.errors import APIError
from server.cluster.forwarding import ResponseStart

# Headers of the upgrade request that do not describe the forwarded POST.
_SOCKET_ONLY = {
    b"connection",
    b"upgrade",
    b"content-length",
    b"content-type",
    b"transfer-encoding",
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
}


class ReplicaStream(Protocol):
    """A streaming Ray Serve call (DeploymentResponseGenerator), as far as it is used."""

    def __aiter__(self) -> AsyncIterator[ResponseStart | bytes]: ...

    async def __anext__(self) -> ResponseStart | bytes: ...

    def cancel(self) -> None: ...


def post_headers(ws: WebSocket) -> list[tuple[bytes, bytes]]:
    """The connection's headers (the API key, host, origin, ...) for a JSON POST."""
    kept = [(k, v) for k, v in ws.scope["headers"] if k.lower() not in _SOCKET_ONLY]
    return [*kept, (b"content-type", b"application/json")]


def post_body(fields: dict[str, Any]) -> bytes:
    return json.dumps({**fields, "stream": True}).encode()


class SSEData:
    """The `data` of each whole server-sent event in a byte stream fed piece by piece."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> Iterator[str]:
        self._pending = (self._pending + chunk).replace(b"\r\n", b"\n")
        while b"\n\n" in self._pending:
            event, self._pending = self._pending.split(b"\n\n", 1)
            lines = event.decode().split("\n")
            data = [line[5:].removeprefix(" ") for line in lines if line.startswith("data:")]
            if data:
                yield "\n".join(data)


def replica_error(status: int, body: bytes) -> APIError:
    """The replica's error answer ({"error": {...}}, OpenAI's shape) as an APIError."""
    try:
        error = json.loads(body)["error"]
        return APIError(
            status,
            str(error["message"]),
            type=str(error.get("type") or "invalid_request_error"),
            param=error.get("param"),
            code=error.get("code"),
        )
    except (ValueError, KeyError, TypeError):
        return APIError(status, body.decode(errors="replace")[:500] or "no answer")


async def relay(ws: WebSocket, stream: ReplicaStream) -> ResponseStart:
    """Send the forwarded response's events to the socket; raise its error (an APIError,
    which the socket's loop sends as an `error` event). Returns how the replica answered."""
    try:
        try:
            start = await stream.__anext__()
        except Exception as e:  # no replica up, or it died
            raise APIError(
                503, f"no replica could answer: {type(e).__name__}", type="server_error"
            ) from e
        assert isinstance(start, ResponseStart)
        if start.status != 200:
            body = b"".join([c async for c in stream if isinstance(c, bytes)])
            raise replica_error(start.status, body)
        events = SSEData()
        async for chunk in stream:
            assert isinstance(chunk, bytes)
            for data in events.feed(chunk):
                if data != "[DONE]":
                    await ws.send_text(data)
        return start
    finally:
        stream.cancel()  # the client left mid-answer (a no-op once the answer is whole)
