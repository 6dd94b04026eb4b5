"""Embedding workloads: many ~200-token chunks through /v1/embeddings, and the raw loop."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

from server.engine.embedder import Embedder
from server.llama.model import LlamaModel

WORDS = [
    "river",
    "stone",
    "lantern",
    "harbor",
    "meadow",
    "copper",
    "falcon",
    "orchard",
    "signal",
    "timber",
    "glacier",
    "compass",
    "ember",
    "velvet",
    "quarry",
    "beacon",
    "thistle",
    "marble",
    "canyon",
    "willow",
]


def chunks(n: int, words: int = 185) -> list[str]:
    """n distinct texts of about 200 WordPiece tokens each."""
    out = []
    for i in range(n):
        body = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words))
        out.append(f"Chunk {i}: {body}.")
    return out


@dataclass
class EmbedResult:
    texts: int
    tokens: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # per request, seconds

    @property
    def texts_per_second(self) -> float:
        return self.texts / self.seconds

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


async def run_embed_load(
    base_url: str, model: str, texts: list[str], concurrency: int, per_request: int = 1
) -> EmbedResult:
    """Send texts `per_request` at a time, `concurrency` requests in flight."""
    groups = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for g in groups:
        queue.put_nowait(g)
    tokens = 0
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker() -> None:
            nonlocal tokens
            while not queue.empty():
                group = queue.get_nowait()
                started = time.perf_counter()
                r = await client.post(
                    f"{base_url}/v1/embeddings", json={"model": model, "input": group}
                )
                r.raise_for_status()
                tokens += r.json()["usage"]["prompt_tokens"]
                latencies.append(time.perf_counter() - started)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    return EmbedResult(len(texts), tokens, seconds, latencies)


def run_raw_embed_loop(
    model: LlamaModel, texts: list[str], n_ctx: int, n_seq_max: int, threads: int
) -> EmbedResult:
    """The same texts straight through the Embedder (no HTTP), all queued at once."""
    embedder = Embedder(model, n_ctx, n_seq_max, threads)
    embedder.start()
    try:
        inputs = [model.tokenize(t, add_special=True) for t in texts]
        t0 = time.perf_counter()
        vectors = embedder.submit(inputs).result()
        seconds = time.perf_counter() - t0
    finally:
        embedder.stop()
    assert np.isfinite(vectors).all()
    return EmbedResult(len(texts), sum(len(i) for i in inputs), seconds)
