"""Hearth against llama-server on one GPU: the same GGUF, the same parallelism, the same
workloads, rounds alternated; the figures and Hearth's step profile go to one folder.

    python -m bench.gpu.measure --model standin.gguf --llama-server build/bin/llama-server \\
        --out results/

Workloads (issue 16's anchor): distinct ~120-token prompts with 128 output tokens at
concurrency 1, 8 and 32; one ~1,000-token system prompt with short questions, 32 output
tokens, at 8 and 32. Greedy, EOS ignored (a zero-weight stand-in's logits are all equal).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.cli import conversations
from bench.load import run_load
from bench.report import Summary, summarize
from bench.servers import start_llama_server
from server.launch import ServerProcess, free_port, start_process


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # bench.cli workload
    prompt_words: int
    output_tokens: int
    concurrency: int
    requests: int


WORKLOADS = [
    Workload("unique c=1", "unique", 100, 128, 1, 8),
    Workload("unique c=8", "unique", 100, 128, 8, 48),
    Workload("unique c=32", "unique", 100, 128, 32, 128),
    Workload("shared c=8", "shared-prefix", 800, 32, 8, 48),
    Workload("shared c=32", "shared-prefix", 800, 32, 32, 128),
]


def start_hearth_gpu(
    logs: Path,
    model: Path,
    parallel: int,
    n_ctx: int,
    config_text: str = "[embedding]\nenabled = false\n",
    data_dir: Path | None = None,
) -> ServerProcess:
    """Hearth with every layer on the GPU. By default the chat model alone: embeddings and
    retrieval are not what measure.py measures (functional.py passes its own config)."""
    port = free_port()
    config = logs / "gpu.toml"
    config.write_text(config_text)
    cmd = [
        sys.executable,
        "-m",
        "server.cli",
        "serve",
        "--config",
        str(config),
        "--data-dir",
        str(data_dir or logs / "data"),
        "--model",
        str(model),
        "--port",
        str(port),
        "--parallel",
        str(parallel),
        "--n-ctx",
        str(n_ctx),
        "--n-gpu-layers",
        "-1",
        "--log-level",
        "warning",
    ]
    return start_process(cmd, port, logs / f"hearth-{port}.log", timeout=300)


def visible_token_bias(url: str) -> dict[str, dict[str, float]]:
    """A zero-weight model's logits are all equal, so greedy decoding picks token 0, a
    special token that streams as no text: neither TTFT nor the time per output token could
    be read. A logit bias towards an ordinary word (" the") makes every token visible, on
    both servers alike."""
    r = httpx.post(f"{url}/tokenize", json={"content": " the"}, timeout=30).json()
    token = r["tokens"][0]
    token = token["id"] if isinstance(token, dict) else token
    return {"logit_bias": {str(token): 10.0}}


def measure(url: str, model: str, w: Workload, label: str) -> Summary:
    convs = conversations(w.kind, w.requests, w.prompt_words)
    extra = visible_token_bias(url)
    # Warm-up: CUDA graphs and kernels are built on first use; not counted.
    warm = convs[: min(4, len(convs))]
    asyncio.run(run_load(url, model, warm, 8, min(4, w.concurrency), extra_body=extra))
    result = asyncio.run(
        run_load(url, model, convs, w.output_tokens, w.concurrency, extra_body=extra)
    )
    return summarize(f"{label} {w.name}", result)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.measure")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--llama-server", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--parallel", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", help="comma-separated workload names to run")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    n_ctx = args.parallel * 2048
    workloads = [w for w in WORKLOADS if not args.only or w.name in args.only.split(",")]
    results: dict[str, dict[str, list[dict]]] = {}
    profiles: dict[str, dict] = {}
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        for round_ in range(args.rounds):
            order = ["hearth", "llama-server"] if round_ % 2 == 0 else ["llama-server", "hearth"]
            for name in order:
                server = (
                    start_hearth_gpu(logs, args.model, args.parallel, n_ctx)
                    if name == "hearth"
                    else start_llama_server(
                        logs,
                        args.model,
                        args.parallel,
                        n_ctx,
                        None,
                        "-ngl",
                        "99",
                        binary=args.llama_server,
                        timeout=300,
                    )
                )
                try:
                    model_id = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"][0][
                        "id"
                    ]
                    for w in workloads:
                        if name == "hearth":
                            before = httpx.get(f"{server.url}/stats").json()["profile"]
                        s = measure(server.url, model_id, w, name)
                        results.setdefault(w.name, {}).setdefault(name, []).append(s.as_dict())
                        print(
                            f"round {round_} {name:12} {w.name:12} "
                            f"{s.output_throughput:8.1f} tok/s  TTFT p50 "
                            f"{s.latency_ms['ttft']['p50']:7.1f} ms  TPOT p50 "
                            f"{s.latency_ms['tpot']['p50']:6.2f} ms  failures {s.failures}",
                            flush=True,
                        )
                        if name == "hearth":
                            after = httpx.get(f"{server.url}/stats").json()["profile"]
                            steps = max(after["steps"] - before["steps"], 1)
                            profiles[f"round {round_} {w.name}"] = {
                                k: round((after[k] - before[k]) * 1000 / steps, 4)
                                for k in after
                                if k != "steps"
                            } | {"steps": after["steps"] - before["steps"]}
                    if name == "hearth":
                        health = httpx.get(f"{server.url}/health").json()
                        (args.out / "hearth-health.json").write_text(json.dumps(health, indent=1))
                finally:
                    server.stop()
        for f in logs.glob("*.log"):
            (args.out / f.name).write_text(f.read_text(errors="replace")[-20000:])
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "profile.json").write_text(json.dumps(profiles, indent=1))
    lines = ["| workload | Hearth tok/s | llama-server tok/s | ratio | TTFT p50 H / L (ms) |"]
    lines.append("|---|---|---|---|---|")
    for w in workloads:
        h = max(results[w.name]["hearth"], key=lambda s: s["output_throughput"])
        ls = max(results[w.name]["llama-server"], key=lambda s: s["output_throughput"])
        lines.append(
            f"| {w.name} | {h['output_throughput']:.0f} | {ls['output_throughput']:.0f} | "
            f"{h['output_throughput'] / ls['output_throughput']:.2f}x | "
            f"{h['latency_ms']['ttft']['p50']:.0f} / {ls['latency_ms']['ttft']['p50']:.0f} |"
        )
    lines.append("")
    lines.append("Hearth's engine thread per step (ms): " + json.dumps(profiles))
    lines.append(f"took {time.monotonic() - t_start:.0f} s")
    table = "\n".join(lines)
    (args.out / "summary.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
