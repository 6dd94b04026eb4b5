"""`hearth bench`: drive any OpenAI-compatible server with a workload and report like
`vllm bench serve` (JSON, Markdown, PNG plots)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from bench.load import TOPICS, Messages, run_load
from bench.report import Summary, summarize, to_markdown, write

WORKLOADS = ("unique", "shared-prefix", "rag", "embeddings")
PEERS = ("llama-server", "llama-cpp-python")


def _filler(words: int, seed: int) -> str:
    vocab = [
        "system",
        "handbook",
        "policy",
        "customer",
        "order",
        "shipping",
        "warranty",
        "return",
        "invoice",
        "account",
        "password",
        "device",
        "battery",
        "screen",
        "update",
        "network",
        "storage",
    ]
    return " ".join(vocab[(seed * 7 + i * 3) % len(vocab)] for i in range(words))


def conversations(workload: str, n: int, prompt_words: int) -> list[Messages]:
    """unique: distinct prompts; shared-prefix: one long system prompt, short questions;
    rag: retrieved-looking passages drawn from a small pool, so prefixes partly repeat."""
    if workload == "unique":
        return [
            [
                {
                    "role": "user",
                    "content": f"Request {i}: {_filler(prompt_words, i)}. "
                    f"Now write about {TOPICS[i % len(TOPICS)]}.",
                }
            ]
            for i in range(n)
        ]
    if workload == "shared-prefix":
        system = "You are a support assistant. Reference: " + _filler(prompt_words, 0)
        return [
            [
                {"role": "system", "content": system},
                {"role": "user", "content": f"Question {i}: do you sell {TOPICS[i % 16]}?"},
            ]
            for i in range(n)
        ]
    pool = [f"[{j}] " + _filler(max(prompt_words // 3, 10), 100 + j) for j in range(6)]
    out = []
    for i in range(n):
        passages = "\n\n".join(pool[(i + k) % len(pool)] for k in range(3))
        out.append(
            [
                {"role": "system", "content": "Answer from the sources."},
                {
                    "role": "user",
                    "content": f"{passages}\n\nQuestion {i}: what about {TOPICS[i % 16]}?",
                },
            ]
        )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hearth bench", description=__doc__)
    p.add_argument("--url", default="http://127.0.0.1:8080", help="server to measure")
    p.add_argument("--model", help="model id (default: the server's first)")
    p.add_argument("--workload", choices=WORKLOADS, default="unique")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--concurrency", default="1,8", help="one or more, comma-separated")
    p.add_argument("--rate", type=float, help="Poisson request rate (requests/s)")
    p.add_argument("--prompt-words", type=int, default=40)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument(
        "--per-request",
        type=int,
        default=1,
        help="embeddings: texts in each request (LangChain and LlamaIndex send 16 to 1000)",
    )
    p.add_argument("--label", help="name of this run in the report (default: the URL)")
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument(
        "--peers",
        nargs="*",
        choices=PEERS,
        help="also run the workload against these servers, started on the same model file "
        "with the same threads and parallelism, and print ratios (no names: all of them)",
    )
    p.add_argument(
        "--models",
        type=Path,
        nargs="+",
        help="sweep GGUF files: prefill/decode speed, throughput, perplexity",
    )
    p.add_argument("--text", type=Path, help="text for perplexity in a --models sweep")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.models:
        from bench.sweep import run_sweep

        return run_sweep(args.models, args.text, args.out)
    try:
        levels = [int(c) for c in args.concurrency.split(",") if c]
        model = args.model or httpx.get(f"{args.url}/v1/models", timeout=30).json()["data"][0]["id"]
    except (ValueError, httpx.HTTPError, KeyError, IndexError) as e:
        print(f"hearth bench: {e}", file=sys.stderr)
        return 1
    if args.workload == "embeddings":
        return _embeddings(args, levels)
    convs = conversations(args.workload, args.requests, args.prompt_words)
    label = args.label or args.url
    summaries = [_run_level(args, args.url, model, convs, level, label) for level in levels]
    if args.peers is not None:
        summaries += _peer_runs(args, model, convs, levels)
    paths = write(summaries, args.out)
    print(to_markdown(summaries))
    for line in short_output_warnings(summaries, args.output_tokens):
        print(line, file=sys.stderr)
    for line in ratio_lines(summaries):
        print(line)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0 if all(s.failures == 0 for s in summaries) else 1


def _run_level(
    args: argparse.Namespace,
    url: str,
    model: str,
    convs: list[Messages],
    level: int,
    label: str,
    extra_body: dict[str, Any] | None = None,
) -> Summary:
    """One workload at one concurrency against one server, with a progress bar."""
    with tqdm(total=len(convs), desc=f"{label} c={level}", unit="req", file=sys.stderr) as bar:
        result = asyncio.run(
            run_load(
                url,
                model,
                convs,
                args.output_tokens,
                level,
                rate=args.rate,
                on_done=lambda: bar.update(1),
                extra_body=extra_body,
            )
        )
    return summarize(label, result, args.rate)


def _peer_runs(
    args: argparse.Namespace, model: str, convs: list[Messages], levels: list[int]
) -> list[Summary]:
    """The same workload against each peer, on the model file the Hearth server reports."""
    import os
    import tempfile

    from bench.peer_build import build_llama_server
    from bench.servers import ServerProcess, start_llama_cpp_python, start_llama_server

    info = httpx.get(f"{args.url}/v1/models", timeout=30).json()["data"][0]
    path = info.get("meta", {}).get("path")
    if not path:
        print(
            "hearth bench: --peers needs a Hearth server at --url (it names its model file)",
            file=sys.stderr,
        )
        return []
    threads = os.cpu_count() or 1
    # The same number of parallel sequences as the Hearth server runs (a peer with more
    # slots would be measured on a different configuration).
    stats = httpx.get(f"{args.url}/stats", timeout=30)
    parallel = stats.json().get("max_running", max(levels)) if stats.is_success else max(levels)
    # Room for every concurrent request's prompt and output, whichever server shares less.
    n_ctx = max(levels) * 2048
    out = []
    for peer in args.peers or PEERS:
        with tempfile.TemporaryDirectory() as logs:
            server: ServerProcess
            if peer == "llama-server":
                if build_llama_server() is None:
                    print("hearth bench: skipping llama-server (no build)", file=sys.stderr)
                    continue
                server = start_llama_server(Path(logs), Path(path), parallel, n_ctx, threads)
            else:
                # One request at a time by design, so its context only needs one.
                server = start_llama_cpp_python(Path(logs), Path(path), 2048 * 2, threads)
            try:
                out += [
                    _run_level(args, server.url, model, convs, level, peer, server.extra_body)
                    for level in levels
                ]
            finally:
                server.stop()
    return out


def _embeddings(args: argparse.Namespace, levels: list[int]) -> int:
    """~200-token texts, --per-request at a time, through /v1/embeddings at each
    concurrency."""
    import json

    from bench.embed_load import chunks, run_embed_load
    from bench.report import describe

    cards = httpx.get(f"{args.url}/v1/models", timeout=30).json()["data"]
    model = args.model or next(
        (c["id"] for c in cards if c.get("meta", {}).get("kind") == "embedding"), cards[0]["id"]
    )
    texts = chunks(args.requests)
    rows = []
    for level in levels:
        r = asyncio.run(run_embed_load(args.url, model, texts, level, args.per_request))
        rows.append(
            {
                "label": args.label or args.url,
                "concurrency": level,
                "texts_per_request": args.per_request,
                "texts_per_second": r.texts_per_second,
                "tokens_per_second": r.tokens_per_second,
                "latency_ms": describe(r.latencies),
            }
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    table = [
        "| run | concurrency | texts/s | tokens/s | latency p50/p90/p99 ms |",
        "|---|---|---|---|---|",
    ]
    table += [
        f"| {r['label']} | {r['concurrency']} | {r['texts_per_second']:.1f} | "
        f"{r['tokens_per_second']:.0f} | {r['latency_ms']['p50']:.0f} / "
        f"{r['latency_ms']['p90']:.0f} / {r['latency_ms']['p99']:.0f} |"
        for r in rows
    ]
    (args.out / "results.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


def short_output_warnings(summaries: list[Summary], output_tokens: int) -> list[str]:
    """Runs whose server stopped before max_tokens (it ignored `ignore_eos`): their
    throughput is not comparable with the others'."""
    return [
        f"warning: {s.label} at concurrency {s.concurrency} generated {s.output_tokens} of "
        f"{s.requests * output_tokens} tokens (it does not honour ignore_eos?); its figures "
        "are not comparable"
        for s in summaries
        if s.output_tokens < s.requests * output_tokens
    ]


def ratio_lines(summaries: list[Summary]) -> list[str]:
    """'<first label> / <other label>' output-throughput ratios at each concurrency."""
    labels = list(dict.fromkeys(s.label for s in summaries))
    lines = []
    for other in labels[1:]:
        for mine in (s for s in summaries if s.label == labels[0]):
            theirs = next(
                (s for s in summaries if s.label == other and s.concurrency == mine.concurrency),
                None,
            )
            if theirs is not None and theirs.output_throughput > 0:
                ratio = mine.output_throughput / theirs.output_throughput
                lines.append(
                    f"{labels[0]} / {other} at concurrency {mine.concurrency}: "
                    f"{ratio:.2f}x output tokens/s"
                )
    return lines
