"""A thread that serves an inbox: what the engine and the embedder share.

Other threads `put` work; the owner's loop takes it with `get`. However the thread ends
(asked to stop, or by an error), the inbox is closed under the same lock `put` takes and
whatever is left in it goes to the owner's `finish`, to be answered: nothing put is ever
lost, and a put after the close raises InboxClosed instead of waiting forever. An error
that ends the thread is kept in `failure` (for /health) before anyone is answered.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

logger = logging.getLogger("hearth.engine")

# What get() returns once stop() has been called.
STOPPED = object()


class InboxClosed(RuntimeError):
    """The thread has ended; the message says why."""


class WorkerThread:
    def __init__(self, name: str, description: str) -> None:
        self.name = name  # the thread's name
        self.description = description  # for messages: "the engine thread"
        self.failure: str | None = None
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, loop: Callable[[], None], finish: Callable[[list[object]], None]) -> None:
        """Run loop() on the thread; when it returns or raises, finish(leftovers)."""
        self._thread = threading.Thread(
            target=self._main, args=(loop, finish), name=self.name, daemon=True
        )
        self._thread.start()

    def _main(self, loop: Callable[[], None], finish: Callable[[list[object]], None]) -> None:
        try:
            loop()
        except BaseException as e:
            self.failure = f"{self.description} stopped: {type(e).__name__}: {e}"
            logger.critical("%s", self.failure, exc_info=True)
            raise
        finally:
            finish(self.close())

    def put(self, item: object) -> None:
        with self._lock:
            if self._closed:
                raise InboxClosed(self.failure or f"{self.description} is not running")
            self._inbox.put(item)

    def get(self, block: bool) -> object | None:
        """The next item (STOPPED after stop()); None when there is none and block is False."""
        try:
            return self._inbox.get(block)
        except queue.Empty:
            return None

    def close(self) -> list[object]:
        """Take no more items; returns those not yet taken."""
        with self._lock:
            self._closed = True
        leftovers = []
        while (item := self.get(block=False)) is not None:
            if item is not STOPPED:
                leftovers.append(item)
        return leftovers

    def stop(self) -> None:
        """Ask the loop to end (it sees STOPPED) and wait for the thread."""
        if self._thread is not None:
            self._inbox.put(STOPPED)
            self._thread.join()
            self._thread = None
