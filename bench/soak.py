"""`make soak`: mixed load with faults against a live server, then a check that it is
back where it started.

Chat (streamed and not), text completions (streamed) and embeddings at a fixed
concurrency, a fixed number of requests; a third of the streams are dropped by their
client at a random point. Afterwards: every client that stayed got a complete answer,
nothing runs or waits, no KV cell or sequence id is held by anything but the prefix cache,
/health is 200, and the server's memory is back within a few percent of where a warm-up
round of the same load left it. The suite runs a short version (tests/test_soak.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.load import TOPICS
from bench.report import write_section
from bench.servers import start_hearth

KINDS = ("chat-stream", "chat", "completion-stream", "embeddings")
WEIGHTS = (4, 2, 2, 2)
# How far back to within a few percent the memory must come.
RSS_TOLERANCE = 0.05


@dataclass
class SoakResult:
    requests: int
    seconds: float
    kinds: Counter[str] = field(default_factory=Counter)
    dropped: int = 0  # streams the client abandoned on purpose
    completed: int = 0
    errors: list[str] = field(default_factory=list)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def _one(client: httpx.AsyncClient, i: int, rng: random.Random, result: SoakResult) -> None:
    kind = rng.choices(KINDS, WEIGHTS)[0]
    result.kinds[kind] += 1
    topic = TOPICS[i % len(TOPICS)]
    max_tokens = rng.randint(8, 40)
    # A third of the streams are dropped after a random number of events.
    drop_after = rng.randint(1, 12) if kind.endswith("stream") and rng.random() < 1 / 3 else None
    if kind == "embeddings":
        texts = [f"{topic} note {i}.{k} " * rng.randint(1, 20) for k in range(rng.randint(1, 8))]
        r = await client.post("/v1/embeddings", json={"input": texts})
        if r.status_code != 200 or len(r.json()["data"]) != len(texts):
            result.errors.append(f"embeddings {r.status_code}: {r.text[:200]}")
        else:
            result.completed += 1
        return
    messages = [{"role": "user", "content": f"Request {i}: tell me about {topic}."}]
    if kind == "chat":
        r = await client.post(
            "/v1/chat/completions", json={"messages": messages, "max_tokens": max_tokens}
        )
        if r.status_code != 200 or not r.json()["choices"][0]["finish_reason"]:
            result.errors.append(f"chat {r.status_code}: {r.text[:200]}")
        else:
            result.completed += 1
        return
    if kind == "chat-stream":
        path, body = "/v1/chat/completions", {"messages": messages}
    else:
        path, body = "/v1/completions", {"prompt": f"Request {i}: {topic} is"}
    body.update(max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})
    events = 0
    async with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            result.errors.append(f"{kind} {r.status_code}: {(await r.aread())[:200]!r}")
            return
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            events += 1
            if drop_after is not None and events >= drop_after:
                result.dropped += 1
                return  # leaving the block closes the connection mid-stream
            if line == "data: [DONE]":
                result.completed += 1
                return
            if '"error"' in line and json.loads(line[6:]).get("error"):
                result.errors.append(f"{kind}: {line[:200]}")
                return
    result.errors.append(f"{kind}: the stream ended without [DONE] after {events} events")


async def run_load(url: str, requests: int, concurrency: int, seed: int) -> SoakResult:
    rng = random.Random(seed)
    result = SoakResult(requests, 0.0)
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency * 2)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def guarded(i: int) -> None:
            async with gate:
                try:
                    await _one(client, i, rng, result)
                except httpx.HTTPError as e:
                    result.errors.append(f"request {i}: {type(e).__name__}: {e}")

        await asyncio.gather(*(guarded(i) for i in range(requests)))
    result.seconds = time.monotonic() - started
    return result


def settle(url: str, timeout: float = 60) -> dict:
    """/stats once nothing runs, waits or is in flight."""
    deadline = time.monotonic() + timeout
    while True:
        stats = httpx.get(f"{url}/stats", timeout=10).json()
        idle = stats["running"] == 0 and stats["waiting"] == 0 and stats["active"] == 0
        if idle or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def leaks(stats: dict) -> list[str]:
    """What an idle engine should not hold."""
    found = []
    if stats["running"] or stats["waiting"] or stats["active"]:
        found.append(
            f"not idle: {stats['running']} running, {stats['waiting']} waiting, "
            f"{stats['active']} active"
        )
    if stats["cells_used"] != stats["cache_cells"]:
        found.append(
            f"{stats['cells_used'] - stats['cache_cells']} KV cells held outside the cache"
        )
    held = stats["sequence_ids"] - stats["free_sequence_ids"]
    if held != stats["cache_entries"]:
        found.append(f"{held} sequence ids held, {stats['cache_entries']} by the cache")
    return found


@dataclass
class SoakReport:
    warmup: SoakResult
    load: SoakResult
    rss_before: float
    rss_after: float
    stats: dict
    leaks: list[str]
    healthy: bool
    # MiB of KV the prefix cache's host-RAM tier held at each point: memory it is meant to
    # keep (up to cache.ram_mb), taken out of RSS before comparing.
    ram_before: float = 0.0
    ram_after: float = 0.0

    @property
    def rss_growth(self) -> float:
        """Growth of RSS beyond what the RAM tier holds, as a fraction."""
        before = self.rss_before - self.ram_before
        return (self.rss_after - self.ram_after) / before - 1

    @property
    def ok(self) -> bool:
        return (
            not self.load.errors
            and not self.leaks
            and self.healthy
            and self.rss_growth <= RSS_TOLERANCE
        )


def soak(url: str, pid: int, requests: int, concurrency: int, seed: int) -> SoakReport:
    warmup = asyncio.run(run_load(url, max(concurrency * 2, requests // 4), concurrency, seed + 1))
    before = settle(url)
    rss_before = rss_mb(pid)
    load = asyncio.run(run_load(url, requests, concurrency, seed))
    stats = settle(url)
    healthy = httpx.get(f"{url}/health", timeout=10).status_code == 200
    return SoakReport(
        warmup,
        load,
        rss_before,
        rss_mb(pid),
        stats,
        leaks(stats),
        healthy,
        before.get("ram_bytes", 0) / 2**20,
        stats.get("ram_bytes", 0) / 2**20,
    )


def render(report: SoakReport, concurrency: int) -> str:
    load = report.load
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(load.kinds.items()))
    growth = report.rss_growth * 100
    return "\n".join(
        [
            "## Soak: mixed load with dropped streams (`make soak`)",
            "",
            f"{load.requests} requests at concurrency {concurrency} ({kinds}), 8-40 output "
            f"tokens; {load.dropped} streams dropped by their client at a random point, "
            f"after a warm-up of {report.warmup.requests} requests of the same mix.",
            "",
            "| figure | value |",
            "|---|---|",
            f"| wall time | {load.seconds:.0f} s |",
            f"| completed / dropped / errors | {load.completed} / {load.dropped} / "
            f"{len(load.errors)} |",
            f"| idle afterwards: running, waiting, in flight | {report.stats['running']}, "
            f"{report.stats['waiting']}, {report.stats['active']} |",
            f"| KV cells in use / held by the prefix cache | {report.stats['cells_used']} / "
            f"{report.stats['cache_cells']} |",
            f"| sequence ids in use / cache entries | "
            f"{report.stats['sequence_ids'] - report.stats['free_sequence_ids']} / "
            f"{report.stats['cache_entries']} |",
            f"| RSS after warm-up -> after the soak | {report.rss_before:.0f} MiB -> "
            f"{report.rss_after:.0f} MiB |",
            f"| of which the prefix cache's RAM tier | {report.ram_before:.0f} MiB -> "
            f"{report.ram_after:.0f} MiB |",
            f"| RSS growth beyond the RAM tier | {growth:+.1f}% |",
            f"| /health afterwards | {200 if report.healthy else 'not 200'} |",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--write", type=Path, help="put the figures into this Markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_hearth(Path(tmp), "--data-dir", tmp, "--parallel", "8")
        try:
            report = soak(
                server.url, server.process.pid, args.requests, args.concurrency, args.seed
            )
        finally:
            server.stop()
    text = render(report, args.concurrency)
    print(text)
    for error in report.load.errors[:20]:
        print("error:", error, file=sys.stderr)
    for leak in report.leaks:
        print("leak:", leak, file=sys.stderr)
    if args.write:
        write_section(args.write, "soak", text)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
