"""Drive an OpenAI-compatible server with streaming chat requests and time them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np


@dataclass
class RequestTiming:
    ttft: float  # seconds to the first content token
    latency: float  # seconds to the last byte
    output_tokens: int
    # Arrival times (seconds after the request was sent) of each chunk with content.
    chunk_times: list[float] = field(default_factory=list)
    # From the usage chunk, where the server sends one: prompt tokens, and how many of them
    # its prefix cache served.
    prompt_tokens: int = 0
    cached_tokens: int = 0

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first (vLLM's TPOT)."""
        if self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)

    @property
    def itls(self) -> list[float]:
        """Gaps between consecutive content chunks (inter-token latency)."""
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False)]


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    wall_seconds: float
    timings: list[RequestTiming]
    failures: int = 0

    @property
    def output_tokens(self) -> int:
        return sum(t.output_tokens for t in self.timings)

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.wall_seconds

    @property
    def cached_fraction(self) -> float:
        """Share of the prompt tokens the server's prefix cache served (usage)."""
        prompt = sum(t.prompt_tokens for t in self.timings)
        return sum(t.cached_tokens for t in self.timings) / prompt if prompt else 0.0

    def ttft_percentile(self, q: float) -> float:
        return percentile([t.ttft for t in self.timings], q)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def _one(client: httpx.AsyncClient, url: str, body: dict) -> RequestTiming:
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    chunk_times: list[float] = []
    prompt = cached = 0
    async with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
                tokens = usage["completion_tokens"]
                prompt = usage.get("prompt_tokens", 0)
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            for choice in chunk.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    now = time.perf_counter() - t0
                    chunk_times.append(now)
                    if ttft is None:
                        ttft = now
    latency = time.perf_counter() - t0
    if tokens == 0:
        # No usage chunk (llama-cpp-python's server ignores stream_options): these servers
        # stream one chunk per token, so count the chunks.
        tokens = len(chunk_times)
    return RequestTiming(
        ttft if ttft is not None else latency, latency, tokens, chunk_times, prompt, cached
    )


Messages = list[dict[str, str]]
# Subjects the generated workloads ask about (so prompts differ but look alike).
TOPICS = [
    "lighthouses",
    "volcanoes",
    "bees",
    "glaciers",
    "trains",
    "coral reefs",
    "owls",
    "deserts",
    "comets",
    "rivers",
    "bridges",
    "forests",
    "tides",
    "kites",
    "caves",
    "maps",
]


async def run_load(
    base_url: str,
    model: str,
    conversations: list[Messages],
    max_tokens: int,
    concurrency: int,
    rate: float | None = None,
    on_done: Callable[[], None] | None = None,
    extra_body: dict[str, Any] | None = None,
    bodies: list[dict[str, Any]] | None = None,
) -> LoadResult:
    """Send each conversation once, `concurrency` at a time, streaming; EOS is ignored so
    every server generates exactly max_tokens. With `rate`, requests start as a Poisson
    process of that many per second (vLLM's request-rate mode) instead of back to back.
    `bodies`: fields for each conversation's request alone (a prediction, say)."""
    url = f"{base_url}/v1/chat/completions"
    own = {id(c): b for c, b in zip(conversations, bodies, strict=True)} if bodies else {}
    queue: asyncio.Queue[Messages] = asyncio.Queue()
    for c in conversations:
        queue.put_nowait(c)
    timings: list[RequestTiming] = []
    failures = 0
    # A fresh connection per request: llama-server's HTTP library closes kept-alive
    # connections after a few requests, racing the next request on them.
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=0)

    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def send_one(messages: Messages) -> None:
            nonlocal failures
            body = {
                "model": model,
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
                **(extra_body or {}),
                **own.get(id(messages), {}),
            }
            try:
                timings.append(await _one(client, url, body))
            except httpx.HTTPError:
                # A refused or broken request is a failure of the server under test, not
                # of the benchmark: count it and carry on.
                failures += 1
            if on_done is not None:
                on_done()

        async def worker() -> None:
            while not queue.empty():
                await send_one(queue.get_nowait())

        t0 = time.perf_counter()
        if rate is None:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            # Poisson arrivals (exponential gaps), at most `concurrency` in flight.
            starts = np.cumsum(np.random.default_rng(0).exponential(1.0 / rate, len(conversations)))
            limit = asyncio.Semaphore(concurrency)

            async def arrival(delay: float, messages: Messages) -> None:
                await asyncio.sleep(delay)
                async with limit:
                    await send_one(messages)

            await asyncio.gather(
                *(arrival(float(d), m) for d, m in zip(starts, conversations, strict=True))
            )
        wall = time.perf_counter() - t0
    return LoadResult(concurrency, len(conversations), wall, timings, failures)
