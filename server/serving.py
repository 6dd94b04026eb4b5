"""Serving the app with uvicorn, and stopping it without cutting anyone off.

On SIGTERM or Ctrl-C uvicorn stops accepting connections and waits for the open ones.
Hearth lets the running requests finish for up to `server.drain_seconds`, then ends
whatever still runs with an error (a stream gets an error event and `[DONE]`), so every
client sees a proper end; only then do the workers stop and the models get freed (the
app's lifespan), and the prefix cache is saved. A second signal stops at once.
"""

from __future__ import annotations

import threading
from types import FrameType
from typing import Any

import uvicorn
from sse_starlette.sse import AppStatus
from starlette.applications import Starlette

from server.runtime import Runtime

SHUTTING_DOWN = "the server is shutting down"
# After the engine has ended its requests, what else may still stream gets this long.
STRAGGLER_SECONDS = 2.0


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_exit: Any) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            self._on_exit()
        super().handle_exit(sig, frame)


def begin_shutdown(runtime: Runtime, drain_seconds: float) -> None:
    """Stop taking requests now; end the ones still running after drain_seconds."""
    runtime.engine.begin_drain(SHUTTING_DOWN)
    for delay, action in (
        (drain_seconds, lambda: runtime.engine.abort_all(SHUTTING_DOWN)),
        (drain_seconds + STRAGGLER_SECONDS, lambda: setattr(AppStatus, "should_exit", True)),
    ):
        timer = threading.Timer(delay, action)
        timer.daemon = True
        timer.start()


def serve(app: Starlette, runtime: Runtime) -> None:
    server = runtime.settings.server
    # sse-starlette would otherwise end every stream the moment the signal arrives.
    AppStatus.disable_automatic_graceful_drain()
    config = uvicorn.Config(
        app,
        host=server.host,
        port=server.port,
        log_level=server.log_level,
        # A backstop: by then the engine has ended every request.
        timeout_graceful_shutdown=int(server.drain_seconds + STRAGGLER_SECONDS + 3),
    )
    _Server(config, lambda: begin_shutdown(runtime, server.drain_seconds)).run()
