"""Sustained load and the prefix cache's host-RAM tier (`make bench` runs it after bench.run).

1. More requests than slots, arriving all the time: 64 distinct ~150-token chat prompts at
   concurrency 32 (closed loop), and the same as a Poisson stream near saturation (open
   loop), Hearth and llama-server with the same 8 parallel sequences, same GGUF, same
   threads, taking turns for two rounds (best of each, since this machine drifts). Then
   retrieval-sized prompts (~750 tokens) asking for different lengths (32 to 96 tokens):
   requests finish at different steps, so new prompts are computed beside running decodes,
   which fixed lengths (every request of a wave ending together) hide.
2. What idle cache entries cost decoding: decode throughput on an empty server, and with
   ~20,000 cached tokens idle, in the KV cells (tier off) or in host RAM (tier on).
3. Conversations that come back after others: the time to first token of later turns with
   the tier on and off (the cells hold only a few of the conversations at once).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.cli import conversations
from bench.load import TOPICS, LoadResult, Messages, run_load
from bench.peer_build import build_llama_server
from bench.report import Summary, cpu_name, summarize, write_section
from bench.servers import ServerProcess, hearth_model_file, start_hearth, start_llama_server

PARALLEL = 8
N_CTX = 16384
PROMPT_WORDS = 100
LONG_PROMPT_WORDS = 600  # ~750 tokens with the chat template
PARTS = ("sustained", "idle", "returning")


@dataclass(frozen=True)
class Scale:
    """How big each part is (the bench tests run a small one)."""

    requests: int = 64
    concurrency: int = 32
    output_tokens: int = 64
    rounds: int = 2
    idle_tokens: int = 20_000
    decode_tokens: int = 64
    conversations: int = 24
    long_requests: int = 24  # retrieval-sized prompts, different lengths asked

    @property
    def long_concurrency(self) -> int:
        return max(1, self.concurrency // 2)

    @property
    def length_range(self) -> tuple[int, int]:
        """The lengths the long-prompt requests ask for: output_tokens / 2 to 3/2 of it."""
        return max(1, self.output_tokens // 2), max(1, self.output_tokens * 3 // 2)


def _load(
    server: ServerProcess,
    convs: list[Messages],
    concurrency: int,
    tokens: int,
    rate: float | None = None,
    lengths: list[int] | None = None,
) -> LoadResult:
    """lengths: each request's own max_tokens (else `tokens` for all)."""
    model = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"][0]["id"]
    bodies = [{"max_tokens": n} for n in lengths] if lengths else None
    result = asyncio.run(
        run_load(
            server.url,
            model,
            convs,
            tokens,
            concurrency,
            rate,
            extra_body=server.extra_body,
            bodies=bodies,
        )
    )
    if result.failures:
        raise RuntimeError(f"{result.failures} of {len(convs)} requests failed on {server.url}")
    return result


def sustained(logs: Path, threads: int, peers: bool, scale: Scale) -> list[tuple[str, Summary]]:
    model = hearth_model_file()
    convs = conversations("unique", scale.requests, PROMPT_WORDS)
    best: dict[str, Summary] = {}

    def keep(label: str, summary: Summary) -> None:
        if label not in best or summary.output_throughput > best[label].output_throughput:
            best[label] = summary

    def hearth() -> ServerProcess:
        return start_hearth(logs, "--parallel", str(PARALLEL), "--n-ctx", str(N_CTX))

    def llama() -> ServerProcess:
        return start_llama_server(logs, model, PARALLEL, N_CTX, threads)

    starts = [("hearth", hearth)] + ([("llama-server", llama)] if peers else [])
    for _ in range(scale.rounds):
        for label, start in starts:
            print(f"sustained load: {label} ...", flush=True)
            server = start()
            try:
                result = _load(server, convs, scale.concurrency, scale.output_tokens)
                keep(f"{label} closed", summarize(label, result))
            finally:
                server.stop()
    # Open loop: requests arrive at 90% of what the slower server sustained.
    rate = 0.9 * min(s.request_throughput for s in best.values())
    for label, start in starts:
        print(f"poisson load at {rate:.2f} req/s: {label} ...", flush=True)
        server = start()
        try:
            result = _load(server, convs, scale.concurrency, scale.output_tokens, rate)
            best[f"{label} open"] = summarize(label, result, rate)
        finally:
            server.stop()
    # Retrieval-sized prompts, each asking for its own length (the mean is output_tokens).
    long_convs = conversations("unique", scale.long_requests, LONG_PROMPT_WORDS)
    lengths = _varied_lengths(scale.long_requests, *scale.length_range)
    for _ in range(scale.rounds):
        for label, start in starts:
            print(f"long prompts, varied lengths: {label} ...", flush=True)
            server = start()
            try:
                result = _load(server, long_convs, scale.long_concurrency, 0, lengths=lengths)
                keep(f"{label} long", summarize(label, result))
            finally:
                server.stop()
    return list(best.items())


def _varied_lengths(n: int, low: int, high: int) -> list[int]:
    """n output lengths from low to high, spread evenly, in a fixed shuffled order."""
    return [low + (i * 7) % (high - low + 1) for i in range(n)]


def _fill(server: ServerProcess, tokens: int) -> None:
    """About `tokens` prompt tokens through the server, one distinct ~1,000-token prompt at
    a time, so that many stay cached when it is idle."""
    body = " ".join(f"{TOPICS[i % 16]}-note-{i}" for i in range(300))
    convs = [
        [{"role": "user", "content": f"Archive {k}: {body}. Summarise archive {k}."}]
        for k in range(max(1, tokens // 1000))
    ]
    _load(server, convs, 1, 2)


def idle_cost(logs: Path, scale: Scale) -> list[tuple[str, float, dict]]:
    """Decode throughput (c=8, distinct short prompts) empty and with idle cached tokens.

    The three servers stay up together (idle ones use no CPU) and take turns for
    `scale.rounds` rounds, best of each, so the machine's drift between minutes does not
    pass for a cost of the cache. Each round's prompts are new, so no round reads an
    earlier one's cache entries."""

    def decode(round_: int) -> list[Messages]:
        return [
            [
                {
                    "role": "user",
                    "content": f"Round {round_}, request {i}: a story about {TOPICS[i % 16]}.",
                }
            ]
            for i in range(16)
        ]

    runs = [
        ("empty cache", [], False),
        (
            f"~{scale.idle_tokens:,} tokens idle in the KV cells (tier off)",
            ["--cache-ram-mb", "0", "--cache-cells", "24000"],
            True,
        ),
        (f"~{scale.idle_tokens:,} tokens idle in host RAM (tier on)", [], True),
    ]
    servers: list[tuple[str, ServerProcess, dict]] = []
    best: dict[str, float] = {}
    try:
        for label, flags, fill in runs:
            print(f"idle cost: starting {label} ...", flush=True)
            args = ["--parallel", str(PARALLEL), "--n-ctx", "32768", "--cache-entries", "32"]
            server = start_hearth(logs, *args, *flags)
            servers.append((label, server, {}))
            if fill:
                _fill(server, scale.idle_tokens)
        servers = [
            (label, server, httpx.get(f"{server.url}/stats", timeout=30).json())
            for label, server, _ in servers
        ]
        for round_ in range(scale.rounds):
            for label, server, _ in servers:
                print(f"idle cost: round {round_ + 1}, {label} ...", flush=True)
                tps = _load(server, decode(round_), 8, scale.decode_tokens).tokens_per_second
                print(f"  {tps:.1f} tok/s", flush=True)
                best[label] = max(best.get(label, 0.0), tps)
    finally:
        for _, server, _ in servers:
            server.stop()
    return [(label, best[label], stats) for label, _, stats in servers]


def returning(logs: Path, scale: Scale) -> list[tuple[str, Summary, dict]]:
    """Conversations over one ~500-token document each, 3 turns, round-robin: each comes
    back after all the others. TTFT of turns 2 and 3, tier on and off."""
    n = scale.conversations
    docs = [" ".join(f"{TOPICS[(c + i) % 16]}-{c}-{i}" for i in range(170)) for c in range(n)]

    def turn(c: int, t: int) -> Messages:
        messages: Messages = [{"role": "system", "content": f"Document {c}: {docs[c]}"}]
        for k in range(t):
            messages += [
                {"role": "user", "content": f"Question {k} about document {c}?"},
                {"role": "assistant", "content": f"Answer {k} about document {c}."},
            ]
        messages.append({"role": "user", "content": f"Question {t} about document {c}?"})
        return messages

    out = []
    for label, flags in (("tier on", []), ("tier off", ["--cache-ram-mb", "0"])):
        print(f"returning conversations: {label} ...", flush=True)
        server = start_hearth(logs, "--parallel", str(PARALLEL), "--n-ctx", "8192", *flags)
        try:
            _load(server, [turn(c, 0) for c in range(n)], 4, 16)  # first turns
            later = [turn(c, t) for t in (1, 2) for c in range(n)]
            result = _load(server, later, 4, 16)
            stats = httpx.get(f"{server.url}/stats", timeout=30).json()
            out.append((label, summarize(label, result), stats))
        finally:
            server.stop()
    return out


def _ms(summary: Summary, metric: str, p: str) -> str:
    return f"{summary.latency_ms[metric][p] / 1000:.2f}"


def render(
    load: list[tuple[str, Summary]],
    idle: list[tuple[str, float, dict]],
    back: list[tuple[str, Summary, dict]],
    threads: int,
    seconds: float,
    scale: Scale,
) -> str:
    c = scale.concurrency
    lines = [
        "## Sustained load: more requests than slots",
        "",
        f"{scale.requests} distinct ~150-token chat prompts, {scale.output_tokens} output "
        f"tokens each, {PARALLEL} parallel sequences on both servers, {threads} threads, the "
        f"same GGUF. Closed loop: concurrency {c}. Open loop: Poisson arrivals at 90% of the "
        f"slower server's closed-loop rate, at most {c} in flight. Then "
        f"{scale.long_requests} distinct retrieval-sized prompts (~750 tokens), each asking "
        "for its own number of tokens (EOS ignored), so that requests end at different "
        "steps and new prompts are computed beside running decodes, as in real traffic "
        "(with one length for all, every request of a wave ends together). Best of "
        f"{scale.rounds} alternating rounds for the closed loops.",
        "",
        "| server | load | output tok/s | TTFT p50 / p90 (s) | TPOT p50 / p90 (s) |",
        "|---|---|---|---|---|",
    ]
    low, high = scale.length_range
    shapes = {
        "closed": f"closed, c={c}",
        "long": f"~750-token prompts, {low}-{high} tokens asked, closed, "
        f"c={scale.long_concurrency}",
    }
    for key, s in load:
        label, kind = key.rsplit(" ", 1)
        shape = shapes.get(kind) or f"Poisson {s.rate:.2f} req/s"
        lines.append(
            f"| {label} | {shape} | {s.output_throughput:.1f} | {_ms(s, 'ttft', 'p50')} / "
            f"{_ms(s, 'ttft', 'p90')} | {_ms(s, 'tpot', 'p50')} / {_ms(s, 'tpot', 'p90')} |"
        )
    by = dict(load)
    for kind, name in (("closed", "closed loop"), ("open", "open loop"), ("long", "long prompts")):
        h, p = by.get(f"hearth {kind}"), by.get(f"llama-server {kind}")
        if h and p:
            lines.append(
                f"\n- {name}, Hearth / llama-server: "
                f"{h.output_throughput / p.output_throughput:.2f}x throughput, TTFT p50 "
                f"{h.latency_ms['ttft']['p50'] / p.latency_ms['ttft']['p50']:.2f}x"
            )
    lines += [
        "",
        "## Host-RAM tier: idle cache entries out of the KV cells",
        "",
        f"Decode throughput at concurrency 8 (16 distinct short prompts, {scale.decode_tokens} "
        "tokens each) on a "
        f"server with 32,768 cells, empty, and after ~{scale.idle_tokens:,} tokens of distinct "
        "~1,000-token prompts went through it and stayed cached. The three servers run side "
        f"by side and take turns, best of {scale.rounds} rounds (new prompts each round).",
        "",
        "| cache | KV cells in use before | host RAM | decode tok/s | vs empty |",
        "|---|---|---|---|---|",
    ]
    empty = idle[0][1] if idle else float("nan")
    for label, tps, stats in idle:
        lines.append(
            f"| {label} | {stats['cells_used']:,} | {stats['ram_bytes'] / 2**20:.0f} MiB | "
            f"{tps:.1f} | {tps / empty:.2f}x |"
        )
    lines += [
        "",
        f"{scale.conversations} conversations, each over its own ~500-token document, 3 turns, "
        f"round-robin (each comes back after the {scale.conversations - 1} others), 8,192 "
        "cells: time to first token of turns 2 and 3.",
        "",
        "| tier | TTFT p50 / p90 (s) | prompt tokens served from RAM | restores | spills | "
        "tokens copied out | RAM held at the end |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, s, stats in back:
        tier = stats["tier"]
        lines.append(
            f"| {label} | {_ms(s, 'ttft', 'p50')} / {_ms(s, 'ttft', 'p90')} | "
            f"{stats['cache']['ram_hit_tokens']:,} | {tier['restores']} | {tier['spills']} | "
            f"{tier['spilled_tokens']:,} | {stats['ram_bytes'] / 2**20:.0f} MiB |"
        )
    lines += [
        "",
        f"This section took {seconds:.0f} s on {cpu_name()} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tiers")
    parser.add_argument("--write", type=Path, help="put the figures into this Markdown file")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--requests", type=int, default=Scale.requests)
    parser.add_argument("--concurrency", type=int, default=Scale.concurrency)
    parser.add_argument("--output-tokens", type=int, default=Scale.output_tokens)
    parser.add_argument("--rounds", type=int, default=Scale.rounds)
    parser.add_argument("--idle-tokens", type=int, default=Scale.idle_tokens)
    parser.add_argument("--decode-tokens", type=int, default=Scale.decode_tokens)
    parser.add_argument("--conversations", type=int, default=Scale.conversations)
    parser.add_argument("--long-requests", type=int, default=Scale.long_requests)
    parser.add_argument(
        "--only",
        choices=PARTS,
        action="append",
        help="run only this part (repeatable); its figures are printed, not written",
    )
    args = parser.parse_args(argv)
    parts = args.only or list(PARTS)
    if args.only and args.write:
        parser.error("--only prints its figures; --write takes the whole run")
    scale = Scale(
        args.requests,
        args.concurrency,
        args.output_tokens,
        args.rounds,
        args.idle_tokens,
        args.decode_tokens,
        args.conversations,
        args.long_requests,
    )
    threads = os.cpu_count() or 1
    t0 = time.monotonic()
    peers = not args.no_peers and build_llama_server() is not None
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        load = sustained(logs, threads, peers, scale) if "sustained" in parts else []
        idle = idle_cost(logs, scale) if "idle" in parts else []
        back = returning(logs, scale) if "returning" in parts else []
    text = render(load, idle, back, threads, time.monotonic() - t0, scale)
    print(text)
    if args.write:
        write_section(args.write, "tiers", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
