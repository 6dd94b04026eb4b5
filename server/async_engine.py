"""The asyncio side of the engine: submit a request, await its outputs, cancel on exit.

The engine thread calls `emit` for every output. Outputs go into the event loop through
call_soon_threadsafe, the one thread-safe door into it, but coalesced: however many
requests a step served, the loop is woken once (each wake-up is two syscalls and a fight
for the GIL with the engine thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncIterator

from server.engine.engine import Engine
from server.engine.request import GenerationOutput, GenerationRequest
from server.llama.sampler import SamplingParams


class _LoopDispatcher:
    """Hands outputs from the engine thread to asyncio queues, one wake-up per batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[GenerationOutput], GenerationOutput]] = []

    def post(self, queue: asyncio.Queue[GenerationOutput], output: GenerationOutput) -> None:
        with self._lock:
            self._pending.append((queue, output))
            if len(self._pending) > 1:
                return  # a wake-up is already on its way
        # RuntimeError: the event loop is gone (shutdown), so nobody is listening.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for queue, output in pending:
            queue.put_nowait(output)


_dispatchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopDispatcher] = (
    weakref.WeakKeyDictionary()
)


def _dispatcher(loop: asyncio.AbstractEventLoop) -> _LoopDispatcher:
    dispatcher = _dispatchers.get(loop)
    if dispatcher is None:
        dispatcher = _dispatchers[loop] = _LoopDispatcher(loop)
    return dispatcher


class GenerationStream:
    """Outputs of one request, in order; the last one has a finish_reason."""

    def __init__(
        self,
        engine: Engine,
        prompt_tokens: list[int],
        max_tokens: int,
        sampling: SamplingParams,
        stop: list[str],
        ignore_eos: bool = False,
        logprobs: int | None = None,
        prompt_logprobs: int | None = None,
        speculative: bool = True,
        prediction: list[int] | None = None,
    ) -> None:
        self._engine = engine
        self._queue: asyncio.Queue[GenerationOutput] = asyncio.Queue()
        self._dispatcher = _dispatcher(asyncio.get_running_loop())
        self.finished = False
        self.request = GenerationRequest(
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            emit=self._emit,
            sampling=sampling,
            stop=stop,
            ignore_eos=ignore_eos,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            speculative=speculative,
            prediction=prediction,
        )
        engine.submit(self.request)  # raises before anything is queued

    def _emit(self, output: GenerationOutput) -> None:  # engine thread
        self._dispatcher.post(self._queue, output)

    async def __aiter__(self) -> AsyncIterator[GenerationOutput]:
        while not self.finished:
            output = await self._queue.get()
            self.finished = output.finished
            yield output

    def cancel(self) -> None:
        """Stop generating (the client left); frees the sequence within one engine step."""
        if not self.finished:
            self._engine.cancel(self.request)
