"""Prompt-lookup drafting against Hearth without it (issue 19): two servers on the same
GGUF, one with engine.max_draft = 8 and one with drafting off, rounds alternated.

Workloads, greedy: (a) quote: a ~150-word passage and "repeat it" / "quote its first
sentences", natural lengths up to 160 tokens (what retrieval-augmented answers do when
they cite); (b) edit: a short function returned with one change; (c) unique: the decode
workload's distinct prompts with 128 tokens, EOS ignored. Concurrency 1 and 8.

    python -m bench.speculative [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import httpx

from bench.cli import conversations
from bench.load import LoadResult, run_load
from bench.report import write_section
from server.launch import ServerProcess, start_hearth

PASSAGES = [
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He lit the great "
    "lamp, wound the clockwork that turned the lens, and wrote the weather in a leather "
    "logbook. Ships passing the rocky point saw the beam sweep across the water every ten "
    "seconds, and the fishermen of the village set their clocks by it.",
    "To reset the router, hold the recessed button on the back panel for ten seconds until "
    "the power light blinks amber. Release it and wait two minutes while the device "
    "restarts. The default network name and password are printed on the label underneath; "
    "change them in the settings page at 192.168.0.1 before connecting other devices.",
    "The committee met on Tuesday to review the budget for the new library wing. Members "
    "agreed to postpone the purchase of new shelving until the spring, approved the hiring "
    "of two part-time archivists, and asked the treasurer to prepare a revised estimate for "
    "the heating system before the next meeting in March.",
]
CODE = """def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item.price * item.quantity
    tax = subtotal * tax_rate
    return subtotal + tax
"""


def workload(name: str) -> list[list[dict[str, str]]]:
    if name == "quote":
        asks = ["Repeat the text above exactly.", "Quote the first two sentences above."]
        return [[{"role": "user", "content": f"{p}\n\n{a}"}] for p in PASSAGES for a in asks]
    if name == "edit":
        changes = ["rename subtotal to total_before_tax", "add a docstring", "round the result"]
        return [
            [{"role": "user", "content": f"{CODE}\nReturn this function with one change: {c}."}]
            for c in changes
        ] * 2
    return conversations("unique", 8, 100)


async def _run(url: str, model: str, name: str, concurrency: int) -> LoadResult:
    convs = workload(name)
    if concurrency > 1:
        convs = (convs * 3)[: max(len(convs), 2 * concurrency)]
    extra = {} if name == "unique" else {"ignore_eos": False}
    tokens = 128 if name == "unique" else 160
    return await run_load(url, model, convs, tokens, concurrency, extra_body=extra)


def measure(servers: dict[str, ServerProcess], rounds: int) -> str:
    model = httpx.get(f"{servers['off'].url}/health").json()["model"]
    best: dict[tuple[str, str, int], LoadResult] = {}
    for _ in range(rounds):
        for name in ("quote", "edit", "unique"):
            for concurrency in (1, 8):
                for label, server in servers.items():  # alternated within each round
                    r = asyncio.run(_run(server.url, model, name, concurrency))
                    key = (label, name, concurrency)
                    if key not in best or r.tokens_per_second > best[key].tokens_per_second:
                        best[key] = r
    stats = httpx.get(f"{servers['on'].url}/stats").json()
    rate = stats["draft_accepted"] / max(1, stats["draft_tokens"])
    lines = [
        "## Prompt-lookup drafting (`python -m bench.speculative`)",
        "",
        "Two Hearth servers on the default GGUF, `engine.max_draft = 8` and drafting off, "
        f'greedy; best of {rounds} alternated rounds. quote: a passage and "repeat / quote '
        'it" (natural lengths, at most 160 tokens); edit: a function returned with one '
        "change; unique: distinct prompts, 128 tokens, EOS ignored.",
        "",
        "| workload | concurrency | drafting tok/s | off tok/s | drafting / off |",
        "|---|---|---|---|---|",
    ]
    for name in ("quote", "edit", "unique"):
        for concurrency in (1, 8):
            on, off = best[("on", name, concurrency)], best[("off", name, concurrency)]
            ratio = on.tokens_per_second / off.tokens_per_second
            lines.append(
                f"| {name} | {concurrency} | {on.tokens_per_second:.1f} | "
                f"{off.tokens_per_second:.1f} | {ratio:.2f}x |"
            )
    lines += [
        "",
        f"Draft tokens accepted over the whole run: {stats['draft_accepted']} of "
        f"{stats['draft_tokens']} ({rate:.0%}).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.speculative")
    p.add_argument("--write", type=Path)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        servers: dict[str, ServerProcess] = {}
        try:
            for label, draft in (("on", 8), ("off", 0)):
                config = Path(tmp) / f"{label}.toml"
                config.write_text(f"[engine]\nmax_draft = {draft}\n")
                servers[label] = start_hearth(Path(tmp), "--config", str(config))
            text = measure(servers, args.rounds)
        finally:
            for server in servers.values():
                server.stop()
    print(text)
    if args.write:
        write_section(args.write, "speculative", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
