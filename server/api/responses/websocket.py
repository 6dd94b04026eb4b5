"""The Responses API's WebSocket mode: one connection to /v1/responses, many responses.

The client sends `{"type": "response.create", ...}` with the fields of a POST
/v1/responses body (`stream` is implied), and gets the same numbered events a streamed
response has, one JSON message each; then it may send the next (usually with
previous_response_id). A request that fails, or a message that is not response.create,
is answered with an `error` event and the connection stays open. Responses on one
connection run one after another, as OpenAI's do without its beta stream ids.

Who may connect is checked before the handshake is accepted, by the same middleware as
every HTTP route (server/api/auth.py, server/api/browser.py). `answer_socket` is the
connection's loop apart from how one response is made, so the cluster's ingress
(server/cluster/socket.py) keeps the same protocol while its replicas make the responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from server.api.body import validate_body
from server.api.errors import APIError, api_error, bad_request
from server.api.responses.handlers import start_response
from server.api.responses.stream import DONE, error_fields
from server.api.responses.wire import ResponsesRequest
from server.api.sse import dumps
from server.chat.generate import cancel_all
from server.runtime import Runtime

# A message larger than this is refused (the HTTP routes' JSON body limit is larger; one
# socket message carries one request).
MAX_MESSAGE_BYTES = 8 << 20
# Messages read ahead while a response is being made.
INBOX_MESSAGES = 4


# Makes one response from a response.create message's fields, sending its events.
Respond = Callable[[WebSocket, dict[str, Any]], Awaitable[None]]


async def responses_socket(ws: WebSocket) -> None:
    runtime: Runtime = ws.app.state.runtime

    async def respond(ws: WebSocket, body: dict[str, Any]) -> None:
        await _respond(ws, runtime, body)

    await answer_socket(ws, respond)


async def answer_socket(ws: WebSocket, respond: Respond) -> None:
    """Accept the connection, then answer its messages one after another until it closes;
    a message that fails gets an `error` event and the next one is read.

    Messages are read as they come, also while a response is being made: a client that
    closes mid-answer cancels it at once (its sequence is freed), even where sending to
    the closed socket does not fail (Ray Serve's proxy drops such sends), and messages
    sent meanwhile wait their turn."""
    await ws.accept()
    # Bounded: a client sending faster than it is answered waits (its reader stops).
    inbox: asyncio.Queue[str] = asyncio.Queue(maxsize=INBOX_MESSAGES)
    closed = asyncio.Event()
    reader = asyncio.create_task(_read(ws, inbox, closed))
    try:
        while True:
            next_text = asyncio.create_task(inbox.get())
            if not await _first(next_text, closed):
                return
            answer = asyncio.create_task(_answer(ws, respond, next_text.result()))
            if not await _first(answer, closed):
                return
            failure = answer.exception()
            if isinstance(failure, WebSocketDisconnect):
                return
            if failure is not None:
                await ws.send_text(error_message(api_error(failure)))  # type: ignore[arg-type]
    except Exception:  # a send failed: the client is gone
        return
    finally:
        reader.cancel()


async def _answer(ws: WebSocket, respond: Respond, text: str) -> None:
    await respond(ws, _create_body(text))


async def _read(ws: WebSocket, inbox: asyncio.Queue[str], closed: asyncio.Event) -> None:
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None and message.get("bytes") is not None:
                text = message["bytes"].decode("utf-8", errors="replace")
            # One character past the limit is enough for _create_body to refuse it.
            await inbox.put((text or "")[: MAX_MESSAGE_BYTES + 1])
    except Exception:  # the connection broke
        return
    finally:
        closed.set()


async def _first(task: asyncio.Task[Any], closed: asyncio.Event) -> bool:
    """Wait for the task or the connection's end: True if the task finished (its error,
    if any, kept in it), False if the connection ended first (the task is cancelled)."""
    gone = asyncio.create_task(closed.wait())
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task.done():
        return True
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    return False


def error_message(error: APIError) -> str:
    return dumps({"type": "error", "sequence_number": 0, **error_fields(error)})


def _create_body(text: str) -> dict[str, Any]:
    if len(text) > MAX_MESSAGE_BYTES:
        raise bad_request(f"A message may be at most {MAX_MESSAGE_BYTES >> 20} MiB.")
    try:
        message = json.loads(text)
    except ValueError:
        raise bad_request("A message must be a JSON object.") from None
    if not isinstance(message, dict) or message.get("type") != "response.create":
        raise bad_request(
            'Send {"type": "response.create", ...} with the fields of POST /v1/responses.',
            param="type",
        )
    return {k: v for k, v in message.items() if k not in ("type", "stream")}


async def _respond(ws: WebSocket, runtime: Runtime, body: dict[str, Any]) -> None:
    req = validate_body(ResponsesRequest, {**body, "stream": True})
    if req.background:
        raise bad_request(
            "background is for POST /v1/responses; on a WebSocket each response is already "
            "sent as it is made.",
            param="background",
        )
    lease = await runtime.models.acquire(req.model)
    with lease:
        started = await start_response(runtime, req, lease)
        try:
            async for event in started.events():
                if event is not DONE:
                    await ws.send_text(str(event.data))
        finally:
            cancel_all(started.streams)  # a client gone mid-answer frees its sequence
