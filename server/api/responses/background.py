"""Background responses (`background: true`): the response is made by a task of its own,
whatever the client does meanwhile. The create call answers at once (status "queued"), or
streams the events as they come; GET /v1/responses/{id} shows the response as it stands,
`?stream=true&starting_after=N` streams its events again from any point (a client that
lost its connection picks up where it was), and POST /v1/responses/{id}/cancel stops it.

The events of a run are kept with it while it runs and for a while after (the most recent
MAX_FINISHED_RUNS finished runs), which is what resuming reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sse_starlette.sse import ServerSentEvent

from server.api.responses.output import ResponseBuilder
from server.api.responses.stream import DONE
from server.async_engine import GenerationStream
from server.chat.generate import cancel_all

logger = logging.getLogger("hearth")

MAX_FINISHED_RUNS = 64
# Events whose response object is the response as it now stands (kept for GET).
_LIFECYCLE = ("response.in_progress", "response.failed")


@dataclass
class BackgroundRun:
    """One background response: its events so far, and whether more will come."""

    builder: ResponseBuilder
    streams: list[GenerationStream]
    keep: Callable[[dict[str, Any]], None]  # store the response object as it stands
    release: Callable[[], None]  # hands the model back (its lease) when the run ends
    events: list[ServerSentEvent] = field(default_factory=list)
    finished: bool = False
    cancelled: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def add(self, event: ServerSentEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def follow(self, starting_after: int = -1) -> AsyncIterator[ServerSentEvent]:
        """The events after sequence number `starting_after`, then each as it comes,
        until the last. (Events are numbered from 0 in order, so an event's number is
        its place in the list.)"""
        i = max(starting_after + 1, 0)
        while True:
            while i < len(self.events):
                yield self.events[i]
                i += 1
            if self.finished:
                return
            self._changed.clear()  # nothing awaited since the check: no event is missed
            await self._changed.wait()


class BackgroundResponses:
    """The background responses of this process, by response id."""

    def __init__(self) -> None:
        self._runs: OrderedDict[str, BackgroundRun] = OrderedDict()

    def get(self, response_id: str) -> BackgroundRun | None:
        return self._runs.get(response_id)

    def start(self, run: BackgroundRun, events: AsyncIterator[ServerSentEvent]) -> None:
        """Make the response from `events` (stream.stream_events) in a task of its own."""
        self._runs[run.builder.id] = run
        run._task = asyncio.get_running_loop().create_task(
            self._drive(run, events), name=f"background response {run.builder.id}"
        )

    async def _drive(self, run: BackgroundRun, events: AsyncIterator[ServerSentEvent]) -> None:
        try:
            async for event in events:
                if event.event in _LIFECYCLE:
                    run.keep(json.loads(str(event.data))["response"])
                run.add(event)
        except asyncio.CancelledError:
            run.cancelled = True
            run.keep(run.builder.body("cancelled", []))
            run.add(DONE)
        except Exception:
            logger.exception("background response %s failed", run.builder.id)
            error = {"code": "server_error", "message": "The server failed making it."}
            run.keep(run.builder.body("failed", [], error=error))
            run.add(DONE)
        finally:
            cancel_all(run.streams)  # a cancelled run frees its sequences
            run.release()
            with contextlib.suppress(Exception):
                await events.aclose()  # type: ignore[attr-defined]
            run.finished = True
            run._changed.set()
            self._forget_old()

    def cancel(self, response_id: str) -> bool:
        """Stop a run still going (True), or do nothing (False: none, or finished)."""
        run = self._runs.get(response_id)
        if run is None or run.finished or run._task is None:
            return False
        run._task.cancel()
        return True

    async def wait(self, response_id: str) -> None:
        """Until the run is finished (its stored response final)."""
        run = self._runs.get(response_id)
        if run is not None and run._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(run._task)

    async def stop(self) -> None:
        """Cancel every run still going (the server is stopping)."""
        for response_id in list(self._runs):
            if self.cancel(response_id):
                await self.wait(response_id)

    def _forget_old(self) -> None:
        finished = [k for k, run in self._runs.items() if run.finished]
        for response_id in finished[: max(0, len(finished) - MAX_FINISHED_RUNS)]:
            del self._runs[response_id]
