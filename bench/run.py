"""`make bench`: Hearth against the raw engine loop and llama.cpp's llama-server.

Same model file, same thread count and parallelism, same prompts, EOS ignored so every
server generates the same number of tokens. Writes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bench.load import LoadResult, run_load
from bench.raw_loop import RawResult, run_raw_loop
from bench.servers import LLAMA_SERVER, ROOT, ServerProcess, start_hearth, start_llama_server
from server.chat_template import ChatTemplate
from server.engine.model import LlamaModel
from server.llama_log import route_llama_logs_to_python
from server.model_files import resolve_chat_model

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
N_CTX = 8192
PARALLEL = 8


@dataclass
class Scenario:
    concurrency: int
    requests: int
    max_tokens: int


SCENARIOS = [Scenario(1, 4, 128), Scenario(8, 16, 128)]


def prompts(n: int) -> list[str]:
    return [
        f"Request {i}: write a detailed story about {TOPICS[i % len(TOPICS)]}." for i in range(n)
    ]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_server(server: ServerProcess, model_id: str) -> dict[int, LoadResult]:
    results = {}
    for sc in SCENARIOS:
        # One warm-up request so neither side pays first-call costs inside the figures.
        asyncio.run(run_load(server.url, model_id, prompts(1), 8, 1))
        results[sc.concurrency] = asyncio.run(
            run_load(server.url, model_id, prompts(sc.requests), sc.max_tokens, sc.concurrency)
        )
    return results


def measure_raw(model: LlamaModel, threads: int) -> dict[int, RawResult]:
    template = ChatTemplate(model.metadata("tokenizer.chat_template") or "")
    results = {}
    for sc in SCENARIOS:
        texts = [template.render([{"role": "user", "content": p}]) for p in prompts(sc.concurrency)]
        tokens = [model.tokenize(t, add_special=False, parse_special=True) for t in texts]
        results[sc.concurrency] = run_raw_loop(model, tokens, sc.max_tokens, N_CTX, threads)
    return results


def fmt(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def render(
    hearth: dict[int, LoadResult],
    raw: dict[int, RawResult],
    peer: dict[int, LoadResult] | None,
    peer_note: str,
    model_path: Path,
    threads: int,
    seconds: float,
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench.run`); numbers from one run on the machine "
        "below. Throughput is output tokens per second summed over all requests (wall clock, "
        "prefill included); TTFT is time to the first streamed content token.",
        "",
        "## Machine and versions",
        "",
        f"- CPU: {cpu_name()}, {os.cpu_count()} cores; llama.cpp threads: {threads}",
        f"- Python {platform.python_version()}, llama-cpp-python "
        f"{metadata.version('llama-cpp-python')}",
        f"- Model: `{model_path.name}`",
        f"- Date: {time.strftime('%Y-%m-%d')}; the whole run took {seconds:.0f} s",
        "",
        "## Decode throughput (unique prompts, EOS ignored)",
        "",
        f"Hearth: `hearth serve --parallel {PARALLEL} --n-ctx {N_CTX}`. Raw loop: the same "
        "prompts prefilled together, then one `llama_decode` per output token over all "
        "sequences, greedy argmax, no HTTP (`bench/raw_loop.py`).",
        "",
        "| concurrency | requests x tokens | Hearth tok/s | TTFT p50 / p90 (s) | raw loop tok/s "
        "| Hearth / raw | llama-server tok/s | TTFT p50 / p90 (s) | Hearth / llama-server |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sc in SCENARIOS:
        h, r = hearth[sc.concurrency], raw[sc.concurrency]
        row = [
            str(sc.concurrency),
            f"{sc.requests} x {sc.max_tokens}",
            fmt(h.tokens_per_second),
            f"{fmt(h.ttft_percentile(50), 2)} / {fmt(h.ttft_percentile(90), 2)}",
            fmt(r.tokens_per_second),
            fmt(h.tokens_per_second / r.tokens_per_second, 2),
        ]
        if peer:
            p = peer[sc.concurrency]
            row += [
                fmt(p.tokens_per_second),
                f"{fmt(p.ttft_percentile(50), 2)} / {fmt(p.ttft_percentile(90), 2)}",
                fmt(h.tokens_per_second / p.tokens_per_second, 2),
            ]
        else:
            row += ["n/a", "n/a", "n/a"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", peer_note, ""]
    return "\n".join(lines)


def build_llama_server() -> bool:
    """Build llama-server from the llama.cpp vendored in llama-cpp-python's sdist (cached)."""
    if LLAMA_SERVER.exists():
        return True
    script = ROOT / "bench" / "build_llama_server.sh"
    return subprocess.run(["bash", str(script)], cwd=ROOT).returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--write", type=Path, help="write the Markdown report here")
    parser.add_argument("--no-peers", action="store_true", help="skip llama-server")
    args = parser.parse_args()
    route_llama_logs_to_python()
    t0 = time.monotonic()
    threads = os.cpu_count() or 1
    model_path = resolve_chat_model("")
    model = LlamaModel(model_path)
    print("raw engine loop ...", flush=True)
    raw = measure_raw(model, threads)
    model.close()

    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        print("hearth ...", flush=True)
        server = start_hearth(
            logs, "--parallel", str(PARALLEL), "--n-ctx", str(N_CTX), "--log-level", "warning"
        )
        try:
            import httpx

            model_id = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
            hearth = measure_server(server, model_id)
        finally:
            server.stop()

        peer = None
        if args.no_peers:
            peer_note = "llama-server: skipped (--no-peers)."
        elif not build_llama_server():
            peer_note = "llama-server: could not be built here; see the build log above."
        else:
            print("llama-server ...", flush=True)
            srv = start_llama_server(logs, model_path, PARALLEL, N_CTX, threads)
            try:
                peer = measure_server(srv, model_id)
            finally:
                srv.stop()
            peer_note = (
                f"llama-server: built from the llama.cpp vendored in llama-cpp-python "
                f"{metadata.version('llama-cpp-python')} (`bench/build_llama_server.sh`), run "
                f"as `llama-server -np {PARALLEL} -c {N_CTX} -t {threads} --kv-unified`."
            )

    report = render(hearth, raw, peer, peer_note, model_path, threads, time.monotonic() - t0)
    print(report)
    if args.write:
        args.write.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
