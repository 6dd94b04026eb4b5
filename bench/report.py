"""Serving statistics in the shape `vllm bench serve` reports them, as JSON, Markdown and
PNG plots: request and output-token throughput; TTFT, time per output token (TPOT),
inter-token latency (ITL) and end-to-end latency as mean, p50, p90 and p99."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.load import LoadResult

PERCENTILES = (50, 90, 99)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class Summary:
    label: str
    concurrency: int
    rate: float | None
    requests: int
    failures: int
    seconds: float
    request_throughput: float
    output_tokens: int
    output_throughput: float
    latency_ms: dict[str, dict[str, float]]  # metric → {"mean", "p50", "p90", "p99"}

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def describe(values: list[float]) -> dict[str, float]:
    if not values:
        return {k: float("nan") for k in ("mean", *[f"p{p}" for p in PERCENTILES])}
    arr = np.asarray(values, dtype=np.float64) * 1000.0
    out = {"mean": float(arr.mean())}
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(arr, p))
    return out


def summarize(label: str, result: LoadResult, rate: float | None = None) -> Summary:
    timings = result.timings
    return Summary(
        label=label,
        concurrency=result.concurrency,
        rate=rate,
        requests=len(timings),
        failures=result.failures,
        seconds=result.wall_seconds,
        request_throughput=len(timings) / result.wall_seconds,
        output_tokens=result.output_tokens,
        output_throughput=result.tokens_per_second,
        latency_ms={
            "ttft": describe([t.ttft for t in timings]),
            "tpot": describe([t.tpot for t in timings if t.tpot is not None]),
            "itl": describe([gap for t in timings for gap in t.itls]),
            "e2e": describe([t.latency for t in timings]),
        },
    )


def to_markdown(summaries: list[Summary]) -> str:
    head = (
        "| run | concurrency | req/s | output tok/s | TTFT p50/p90/p99 ms | TPOT p50/p99 ms "
        "| ITL p50/p99 ms | e2e p50/p99 ms | failed |"
    )
    lines = [head, "|---" * 9 + "|"]
    for s in summaries:
        lat = s.latency_ms
        c = f"{s.concurrency}" + (f" @ {s.rate}/s" if s.rate else "")
        lines.append(
            f"| {s.label} | {c} | {s.request_throughput:.2f} | {s.output_throughput:.1f} | "
            f"{lat['ttft']['p50']:.0f} / {lat['ttft']['p90']:.0f} / {lat['ttft']['p99']:.0f} | "
            f"{lat['tpot']['p50']:.1f} / {lat['tpot']['p99']:.1f} | "
            f"{lat['itl']['p50']:.1f} / {lat['itl']['p99']:.1f} | "
            f"{lat['e2e']['p50']:.0f} / {lat['e2e']['p99']:.0f} | {s.failures} |"
        )
    return "\n".join(lines) + "\n"


def write(summaries: list[Summary], out_dir: Path) -> list[Path]:
    """results.json, results.md, latency.png and throughput.png in out_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        out_dir / "results.json",
        out_dir / "results.md",
        out_dir / "latency.png",
        out_dir / "throughput.png",
    ]
    paths[0].write_text(json.dumps([s.as_dict() for s in summaries], indent=1))
    paths[1].write_text(to_markdown(summaries))

    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, metric in zip(axes, ("ttft", "tpot", "itl", "e2e"), strict=True):
        x = np.arange(len(PERCENTILES))
        width = 0.8 / max(len(summaries), 1)
        for i, s in enumerate(summaries):
            ax.bar(
                x + i * width,
                [s.latency_ms[metric][f"p{p}"] for p in PERCENTILES],
                width,
                label=f"{s.label} c={s.concurrency}",
            )
        ax.set_xticks(x + width * (len(summaries) - 1) / 2, [f"p{p}" for p in PERCENTILES])
        ax.set_title(f"{metric.upper()} (ms)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(s.label for s in summaries):
        runs = sorted((s for s in summaries if s.label == label), key=lambda s: s.concurrency)
        ax.plot(
            [s.concurrency for s in runs],
            [s.output_throughput for s in runs],
            marker="o",
            label=label,
        )
    ax.set_xlabel("concurrency")
    ax.set_ylabel("output tokens/s")
    ax.set_title("Throughput against concurrency")
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[3], dpi=100)
    plt.close(fig)
    return paths


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: start -->", f"<!-- {name}: end -->"


def write_section(path: Path, name: str, markdown: str) -> None:
    """Put `markdown` into the Markdown file between markers named `name`, replacing what
    they held (or appending them), so separate commands can each keep a section of one
    file up to date."""
    start, end = _markers(name)
    block = f"{start}\n{markdown.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        text = before + block + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block
    path.write_text(text)


def kept_sections(text: str) -> str:
    """The marked sections of a report, to carry over when the rest is rewritten."""
    out = []
    for line_no, line in enumerate(lines := text.splitlines()):
        if line.startswith("<!-- ") and line.endswith(": start -->"):
            name = line[len("<!-- ") : -len(": start -->")]
            end = _markers(name)[1]
            if end in lines[line_no:]:
                stop = lines.index(end, line_no)
                out.append("\n".join(lines[line_no : stop + 1]))
    return "\n\n".join(out) + ("\n" if out else "")
