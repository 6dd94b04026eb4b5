"""The asyncio side of the engine: submit a request, await its outputs, cancel on exit.

The engine thread calls `emit` for every output; it is turned into a put on an asyncio
queue through call_soon_threadsafe, the one thread-safe door into the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from server.engine.engine import Engine
from server.engine.request import GenerationOutput, GenerationRequest
from server.engine.sampling import SamplingParams


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
    ) -> None:
        self._engine = engine
        self._queue: asyncio.Queue[GenerationOutput] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self.finished = False
        self.request = GenerationRequest(
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            emit=self._emit,
            sampling=sampling,
            stop=stop,
            ignore_eos=ignore_eos,
            logprobs=logprobs,
        )
        engine.submit(self.request)  # raises before anything is queued

    def _emit(self, output: GenerationOutput) -> None:  # engine thread
        # RuntimeError: the event loop is gone (shutdown), so nobody is listening.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, output)

    async def __aiter__(self) -> AsyncIterator[GenerationOutput]:
        while not self.finished:
            output = await self._queue.get()
            self.finished = output.finished
            yield output

    def cancel(self) -> None:
        """Stop generating (the client left); frees the sequence within one engine step."""
        if not self.finished:
            self._engine.cancel(self.request)
