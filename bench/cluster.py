"""Replicas on Ray Serve: prefix affinity against Ray Serve's default router (issue 20).

    python -m bench.cluster [--rounds 2] [--replicas 2] [--write docs/benchmarks.md]

One Ray cluster of this machine; in each round the application is deployed afresh (cold
caches) with the prefix-affinity router and then with Ray Serve's default power-of-two
router, alternating which goes first, and the same workloads run against each through its
one address, streaming:

- shared prefixes: 8 distinct system prompts (~450 tokens), 4 questions each, interleaved;
- documents (RAG as LangChain's "stuff" chains send it: the retrieved text in the prompt):
  4 documents (~900 tokens), 6 questions each;
- conversations: 8 conversations of 4 turns, each turn resending the history, all
  conversations advancing together (each comes back after the others' turns);
- unique prompts: 32 prompts that share nothing (what affinity must not slow down);
- many prefixes, small caches: 16 distinct system prompts, 4 questions each, interleaved,
  on deployments whose replicas may each keep idle KV for only 60% of the prompts
  (`cache.max_cells`, host-RAM tier off): as when a team has more long prefixes than one
  replica's cache holds. Affinity splits the prompts between the replicas, so each keeps
  its half; at random each replica must keep them all, and least recently used goes.

Cached-token fraction is from the servers' own usage (prompt_tokens_details.cached_tokens);
TTFT and output tokens/s from the client. Best of the rounds per router and workload.

With more replicas than cores (`--replicas 4` here) the replicas share the cores, so speed
compares the routers only with each other; the cached-token fraction is the routers' alone.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from bench.load import TOPICS, LoadResult, Messages, run_load
from bench.report import write_section
from server.launch import free_port
from server.settings import Settings, load_settings

ROUTERS = ("prefix", "default")
PRESSURE = "many prefixes, small caches"
PRESSURE_PROMPTS = 16
# Idle KV each replica may keep under pressure, as a share of all the prompts' tokens.
PRESSURE_SHARE = 0.6


def system_prompts(n: int, first: int = 0) -> list[str]:
    """n distinct handbooks of ~450 tokens, numbered from `first` (each workload its own,
    so one workload never finds another's prompts cached)."""
    out = []
    for k in range(first, first + n):
        rules = " ".join(
            f"Rule {i + 1}: questions about {TOPICS[(i + k) % len(TOPICS)]} are answered "
            f"from section {i + 3 + k} of the manual, politely, in under {i % 5 + 2} sentences."
            for i in range(14)
        )
        out.append(f"You are assistant number {k} of shop {k * 7919 % 1000}. {rules}")
    return out


def shared_prefix_workload() -> list[Messages]:
    prompts = system_prompts(8)
    return [
        [
            {"role": "system", "content": prompts[i % 8]},
            {"role": "user", "content": f"Question {i}: do you sell {TOPICS[i % 16]}?"},
        ]
        for i in range(32)
    ]


def documents_workload() -> list[Messages]:
    docs = []
    for d in range(4):
        paragraphs = " ".join(
            f"Section {d}.{i}: the {TOPICS[(i * 3 + d) % 16]} unit must be checked every "
            f"{i + d + 2} days; its log is kept in binder {d * 10 + i} and signed by the "
            f"shift lead, and faults go to desk {i * d + 1}."
            for i in range(22)
        )
        docs.append(paragraphs)
    return [
        [
            {"role": "system", "content": "Answer from the context only."},
            {
                "role": "user",
                "content": f"Context:\n{docs[i % 4]}\n\nQuestion: what is said about "
                f"{TOPICS[(i * 5) % 16]}?",
            },
        ]
        for i in range(24)
    ]


def conversation_turns(conversations: int = 8, turns: int = 4) -> list[list[Messages]]:
    """Turn t of every conversation, for t in 1..turns (each resends the history)."""
    prompts = system_prompts(conversations, first=100)
    out = []
    for t in range(turns):
        batch = []
        for c in range(conversations):
            history: Messages = [{"role": "system", "content": prompts[c]}]
            for u in range(t + 1):
                history.append({"role": "user", "content": f"Turn {u}: tell me about {TOPICS[u]}."})
                if u < t:
                    history.append({"role": "assistant", "content": f"Here is turn {u}'s answer."})
            batch.append(history)
        out.append(batch)
    return out


def pressure_workload() -> list[Messages]:
    prompts = system_prompts(PRESSURE_PROMPTS, first=200)
    return [
        [
            {"role": "system", "content": prompts[i % PRESSURE_PROMPTS]},
            {"role": "user", "content": f"Question {i}: do you sell {TOPICS[i % 16]}?"},
        ]
        for i in range(4 * PRESSURE_PROMPTS)
    ]


def pressure_cells() -> int:
    """cache.max_cells for the pressure deployments: PRESSURE_SHARE of the tokens of all
    its system prompts (each counted with 40 tokens of template and question)."""
    from llama_cpp import Llama

    from bench.servers import hearth_model_file

    vocab = Llama(str(hearth_model_file()), vocab_only=True, verbose=False)
    prompts = system_prompts(PRESSURE_PROMPTS, first=200)
    tokens = sum(len(vocab.tokenize(p.encode(), add_bos=False)) + 40 for p in prompts)
    return int(PRESSURE_SHARE * tokens)


def unique_workload() -> list[Messages]:
    return [
        [{"role": "user", "content": f"Request {i}: write about {TOPICS[i % 16]} no. {i}."}]
        for i in range(32)
    ]


def merged(results: list[LoadResult]) -> LoadResult:
    wall = sum(r.wall_seconds for r in results)
    timings = [t for r in results for t in r.timings]
    return LoadResult(results[0].concurrency, len(timings), wall, timings)


def measure(url: str, model: str, pressure: bool = False) -> dict[str, LoadResult]:
    def load(convs: list[Messages], max_tokens: int, concurrency: int) -> LoadResult:
        return asyncio.run(run_load(url, model, convs, max_tokens, concurrency))

    if pressure:
        out = {PRESSURE: load(pressure_workload(), 16, 8)}
    else:
        out = {
            "shared prefixes": load(shared_prefix_workload(), 16, 8),
            "documents (RAG)": load(documents_workload(), 16, 6),
            "conversations": merged([load(turn, 16, 8) for turn in conversation_turns()]),
            "unique prompts": load(unique_workload(), 32, 8),
        }
    for name, result in out.items():
        if result.failures:
            raise RuntimeError(f"{name}: {result.failures} requests failed")
    return out


def settings_for(
    router: str, port: int, data_dir: str, replicas: int, max_cells: int = 0
) -> Settings:
    overrides: dict = {
        "server": {"port": port, "log_level": "warning"},
        "storage": {"data_dir": data_dir},
        "cluster": {"replicas": replicas, "replica_cpus": 1, "router": router},
    }
    if max_cells:
        overrides["cache"] = {"max_cells": max_cells, "ram_mb": 0}
    return load_settings(None, overrides)


def run(
    rounds: int, replicas: int, passes: tuple[str, ...] = ("plain", "pressure")
) -> dict[str, list[dict[str, LoadResult]]]:
    import httpx
    import ray
    from ray import serve

    from server.cluster.app import APP_NAME, build

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    results: dict[str, list[dict[str, LoadResult]]] = {r: [] for r in ROUTERS}
    ray.init(num_cpus=replicas + 1, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # The default data directory, where `make models` prepared the models (the
        # workloads upload nothing).
        data_dir = str(load_settings().storage.resolved_data_dir())
        cells = pressure_cells()
        for i in range(rounds):
            order = ROUTERS if i % 2 == 0 else ROUTERS[::-1]
            for router in order:
                measured: dict[str, LoadResult] = {}
                for name in passes:
                    print(f"round {i + 1}: {router} router, {name} ...", flush=True)
                    pressure = name == "pressure"
                    serve.run(
                        build(settings_for(router, port, data_dir, replicas, pressure * cells)),
                        name=APP_NAME,
                        route_prefix="/",
                    )
                    model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
                    measured |= measure(url, model, pressure)
                    serve.delete(APP_NAME)  # the next deployment starts with cold caches
                results[router].append(measured)
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def best(rounds: list[dict[str, LoadResult]], workload: str) -> LoadResult:
    return max((r[workload] for r in rounds), key=lambda r: r.tokens_per_second)


def render(results: dict[str, list[dict[str, LoadResult]]], rounds: int, replicas: int) -> str:
    workloads = list(results["prefix"][0])
    title = "## Replicas on Ray Serve: prefix affinity vs the default router"
    flag = "" if replicas == 2 else f" --replicas {replicas}"
    shared = "; they share them, so speed compares the routers only" if replicas > 2 else ""
    lines = [
        f"{title}, {replicas} replicas (`python -m bench.cluster{flag}`)",
        "",
        f"{replicas} Hearth replicas (1 thread each, this machine's 2 cores{shared}) behind "
        "one address; each deployment starts with cold caches; "
        f"{rounds} rounds alternated, best round per router. Cached = prompt tokens the "
        "replicas' prefix caches served (their usage), TTFT from the client, streaming. "
        f"{PRESSURE!r}: {PRESSURE_PROMPTS} system prompts x 4 questions on replicas that may "
        f"each keep idle KV for {PRESSURE_SHARE:.0%} of them (`cache.max_cells`, RAM tier "
        "off); the other workloads on the default cache.",
        "",
        "| workload | router | cached | TTFT p50 (ms) | TTFT p90 (ms) | output tok/s "
        "| affinity vs default |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload in workloads:
        ours, theirs = best(results["prefix"], workload), best(results["default"], workload)
        for router, r in (("prefix affinity", ours), ("Ray Serve default", theirs)):
            ratio = ""
            if r is ours:
                cached = (
                    f"{ours.cached_fraction / theirs.cached_fraction:.2f}x cached"
                    if theirs.cached_fraction
                    else "-"
                )
                ratio = (
                    f"{cached}, TTFT p90 "
                    f"{ours.ttft_percentile(90) / theirs.ttft_percentile(90):.2f}x, "
                    f"{ours.tokens_per_second / theirs.tokens_per_second:.2f}x tok/s"
                )
            lines.append(
                f"| {workload} | {router} | {r.cached_fraction:.0%} | "
                f"{r.ttft_percentile(50) * 1000:.0f} | {r.ttft_percentile(90) * 1000:.0f} | "
                f"{r.tokens_per_second:.1f} | {ratio} |"
            )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--write", type=Path, help="put the figures into this Markdown file")
    parser.add_argument(
        "--pass",
        dest="passes",
        action="append",
        choices=("plain", "pressure"),
        help="only these deployments (default: both)",
    )
    args = parser.parse_args(argv)
    results = run(args.rounds, args.replicas, tuple(args.passes or ("plain", "pressure")))
    text = render(results, args.rounds, args.replicas)
    print(text)
    if args.write:
        section = "cluster" if args.replicas == 2 else f"cluster-{args.replicas}"
        write_section(args.write, section, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
