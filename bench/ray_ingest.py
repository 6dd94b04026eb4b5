"""Ingestion through the server's own worker and through Ray Data (issue 20).

    python -m bench.ray_ingest [--write docs/benchmarks.md]

The Debian manuals (real PDFs, bench/debian_docs/) indexed three ways, each into a fresh
data directory: the in-process worker (a server, files uploaded through its API), then
`hearth ingest --ray` with 1 and with 2 embedding actors on a Ray cluster of this machine.
Pages and chunks per second over the wall time of the whole command (Ray's start-up
included, reported apart).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pypdf import PdfReader

from bench.debian_docs.fetch import fetch
from bench.report import write_section
from bench.retrieval_quality import CACHE
from bench.servers import start_hearth
from retrieval.catalog import Catalog
from retrieval.client import HearthClient
from server.launch import ROOT


def _chunks(data: Path) -> int:
    catalog = Catalog(data)
    try:
        return sum(f.chunks for s in catalog.list_stores() for f in catalog.list_files(s.id))
    finally:
        catalog.close()


def in_process(logs: Path, manuals: list[Path]) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_hearth(logs, "--log-level", "warning", "--data-dir", f"{tmp}/data")
        try:
            t0 = time.monotonic()
            results = HearthClient(server.url).ingest(manuals, "bench", quiet=True)
            seconds = time.monotonic() - t0
            if any(r["status"] != "completed" for r in results):
                raise RuntimeError(f"ingestion failed: {results}")
        finally:
            server.stop()
        return seconds, _chunks(Path(tmp) / "data")


def with_ray(manuals: list[Path], workers: int) -> tuple[float, int, float]:
    """(seconds, chunks, Ray start-up seconds as its log reports them)."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "server.cli",
                "ingest",
                "--ray",
                "--ray-workers",
                str(workers),
                "--quiet",
                "--data-dir",
                f"{tmp}/data",
                "--store",
                "bench",
                *map(str, manuals),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        seconds = time.monotonic() - t0
        if out.returncode != 0:
            raise RuntimeError(out.stdout + out.stderr)
        # From the command's start to the pipeline's start: Ray's start-up and the upload.
        started = re.search(r"execution finished in ([\d.]+) seconds", out.stderr)
        pipeline = float(started.group(1)) if started else seconds
        return seconds, _chunks(Path(tmp) / "data"), seconds - pipeline


def render(pages: int, runs: list[tuple[str, float, int, float | None]]) -> str:
    base = runs[0][1]
    lines = [
        "## Ingestion on Ray Data (`python -m bench.ray_ingest`)",
        "",
        f"The Debian manuals ({pages} PDF pages) indexed into a fresh data directory each way "
        "on this machine's 2 cores: the server's in-process worker (uploaded through its "
        "API), and `hearth ingest --ray` on a local Ray cluster with 1 and 2 embedding "
        "actors (each actor's embedder gets cores / actors threads).",
        "",
        "| how | wall (s) | pages/s | chunks | chunks/s | vs in-process "
        "| outside the pipeline (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, seconds, chunks, outside in runs:
        extra = f"{outside:.1f}" if outside is not None else "-"
        lines.append(
            f"| {label} | {seconds:.0f} | {pages / seconds:.2f} | {chunks} | "
            f"{chunks / seconds:.1f} | {base / seconds:.2f}x | {extra} |"
        )
    lines += [
        "",
        '"Outside the pipeline": Ray\'s start-up, loading the model for the vector width and '
        "uploading the files, before Ray Data runs; it is paid once per command.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ray_ingest")
    parser.add_argument("--write", type=Path, help="put the figures into this Markdown file")
    args = parser.parse_args(argv)
    manuals = fetch(CACHE / "debian-docs")
    pages = sum(len(PdfReader(m).pages) for m in manuals)
    runs: list[tuple[str, float, int, float | None]] = []
    with tempfile.TemporaryDirectory() as logs:
        print("in-process worker ...", flush=True)
        seconds, chunks = in_process(Path(logs), manuals)
        runs.append(("in-process worker", seconds, chunks, None))
    for workers in (1, 2):
        print(f"ray, {workers} actor(s) ...", flush=True)
        seconds, chunks, outside = with_ray(manuals, workers)
        runs.append(
            (f"Ray Data, {workers} actor{'s' if workers > 1 else ''}", seconds, chunks, outside)
        )
    text = render(pages, runs)
    print(text)
    if args.write:
        write_section(args.write, "ray-ingest", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
