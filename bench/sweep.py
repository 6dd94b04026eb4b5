"""`hearth bench --models A.gguf B.gguf ...`: what each file (a quantization, say) costs and
gives on this machine: prefill and decode tokens/s, server throughput at concurrency 8,
and perplexity, as a table and a plot."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

import httpx

from bench.load import run_load
from bench.raw_loop import run_raw_loop
from bench.servers import start_hearth
from server.chat.template import CHATML_TEMPLATE, ChatTemplate
from server.llama.model import LlamaModel
from server.perplexity import perplexity

ROOT = Path(__file__).resolve().parent.parent


def _speed(path: Path, threads: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s) for one sequence: a 256-token prompt, 64 new tokens."""
    model = LlamaModel(path)
    try:
        template = ChatTemplate(model.metadata("tokenizer.chat_template") or CHATML_TEMPLATE)
        prompt = template.render([{"role": "user", "content": "word " * 250}])
        tokens = model.tokenize(prompt, add_special=False, parse_special=True)
        r = run_raw_loop(model, [tokens], 64, 4096, threads)
        return len(tokens) / r.prefill_seconds, 63 / (r.total_seconds - r.prefill_seconds)
    finally:
        model.close()


def _throughput(path: Path, logs: Path) -> float:
    server = start_hearth(logs, "--model", str(path), "--log-level", "warning")
    try:
        convs = [[{"role": "user", "content": f"Story {i} about the sea."}] for i in range(16)]
        model = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
        return asyncio.run(run_load(server.url, model, convs, 64, 8)).tokens_per_second
    finally:
        server.stop()


def run_sweep(models: list[Path], text_file: Path | None, out: Path) -> int:
    missing = [m for m in models if not m.is_file()]
    if missing:
        print(f"hearth bench: not found: {missing[0]}", file=sys.stderr)
        return 1
    text = (
        text_file.read_text()
        if text_file
        else (ROOT / "README.md").read_text() + (ROOT / "docs" / "architecture.md").read_text()
    )
    threads = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as logs:
        for path in models:
            prefill, decode = _speed(path, threads)
            rows.append(
                {
                    "model": path.name,
                    "size_mib": path.stat().st_size / 2**20,
                    "prefill_tok_s": prefill,
                    "decode_tok_s": decode,
                    "server_tok_s_c8": _throughput(path, Path(logs)),
                    "perplexity": perplexity(path, text, n_ctx=256, max_chunks=8)[0],
                }
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / "models.json").write_text(json.dumps(rows, indent=1))
    table = [
        "| model | MiB | prefill tok/s | decode tok/s | server tok/s (c=8) | perplexity |",
        "|---|---|---|---|---|---|",
    ]
    table += [
        f"| {r['model']} | {r['size_mib']:.0f} | {r['prefill_tok_s']:.0f} | "
        f"{r['decode_tok_s']:.0f} | {r['server_tok_s_c8']:.0f} | {r['perplexity']:.2f} |"
        for r in rows
    ]
    (out / "models.md").write_text("\n".join(table) + "\n")
    _plot(rows, out / "models.png")
    print("\n".join(table))
    print(f"wrote {out / 'models.json'}, {out / 'models.md'}, {out / 'models.png'}")
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["server_tok_s_c8"], r["perplexity"])
        ax.annotate(r["model"], (r["server_tok_s_c8"], r["perplexity"]), fontsize=7)
    ax.set_xlabel("server output tokens/s at concurrency 8")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title("Speed against quality")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
