"""SIGTERM in the middle of streams (`make chaos` runs it after the kill -9 run): every stream
must end with `data: [DONE]`, finished or with an error event, the process must exit within
the drain time plus a few seconds, and a restart must find the prefix cache it saved.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.report import write_section
from bench.servers import start_hearth

SYSTEM = "You are the shutdown test's assistant. " * 40


def _body(i: int, max_tokens: int) -> dict[str, object]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Count to {i}."},
        ],
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
    }


@dataclass
class ShutdownReport:
    drain_seconds: float
    streams: list[list[str]] = field(default_factory=list)  # the data lines of each
    exit_seconds: float = 0.0  # from SIGTERM to the process's exit
    exit_code: int | None = None
    cache_files: list[tuple[str, int]] = field(default_factory=list)  # name, mode
    cached_tokens_after_restart: int = 0

    @property
    def ended_with_done(self) -> int:
        return sum(1 for lines in self.streams if lines and lines[-1] == "data: [DONE]")

    @property
    def ended_with_error(self) -> int:
        return sum(1 for lines in self.streams if len(lines) > 1 and '"error"' in lines[-2])


def run_shutdown(
    workdir: Path, drain_seconds: float = 2.0, long_streams: int = 7, short_streams: int = 1
) -> ShutdownReport:
    """Long streams outlast the drain; short ones finish within it."""
    cache = workdir / "kv"
    args = ("--cache-dir", str(cache), "--data-dir", str(workdir / "data"))
    server = start_hearth(workdir, *args, "--drain-seconds", str(drain_seconds))
    n = long_streams + short_streams
    report = ShutdownReport(drain_seconds, [[] for _ in range(n)])
    streaming = threading.Barrier(n + 1)

    def stream(i: int) -> None:
        max_tokens = 1500 if i < long_streams else 3
        with httpx.stream(
            "POST", f"{server.url}/v1/chat/completions", json=_body(i, max_tokens), timeout=60
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    report.streams[i].append(line)
                    # Past the prompt: the chunk after the role chunk (which comes before
                    # the prefill) holds a token, so the drain times decoding alone.
                    if len(report.streams[i]) == 2:
                        streaming.wait(timeout=60)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    streaming.wait(timeout=60)
    os.kill(server.process.pid, signal.SIGTERM)
    t0 = time.monotonic()
    for t in threads:
        t.join(60)
    report.exit_code = server.process.wait(timeout=60)
    report.exit_seconds = time.monotonic() - t0
    report.cache_files = [(p.name, p.stat().st_mode & 0o777) for p in sorted(cache.iterdir())]
    server = start_hearth(workdir, *args)
    try:
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={**_body(2, 2), "stream": False},
            timeout=60,
        )
        usage = r.json()["usage"]
        report.cached_tokens_after_restart = usage["prompt_tokens_details"]["cached_tokens"]
    finally:
        server.stop()
    return report


def render(report: ShutdownReport) -> str:
    n = len(report.streams)
    modes = sorted({oct(mode) for _, mode in report.cache_files})
    return "\n".join(
        [
            "## SIGTERM during streams (`make chaos`)",
            "",
            f"{n} streams with a shared ~400-token system prompt, SIGTERM while all stream, "
            f"`server.drain_seconds` = {report.drain_seconds:g}; "
            f"{n - report.ended_with_error} of them short enough to finish within the drain.",
            "",
            "| figure | value |",
            "|---|---|",
            f"| streams ended with `data: [DONE]` | {report.ended_with_done} of {n} |",
            f"| of those, ended by the drain with an error event | {report.ended_with_error} |",
            f"| SIGTERM to process exit | {report.exit_seconds:.1f} s (exit code "
            f"{report.exit_code}) |",
            f"| prefix cache files saved (modes) | {len(report.cache_files)} "
            f"({', '.join(modes)}) |",
            f"| cached prompt tokens on the first request after restart | "
            f"{report.cached_tokens_after_restart} |",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drain-seconds", type=float, default=2.0)
    parser.add_argument("--write", type=Path, help="put the figures into this Markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = run_shutdown(Path(tmp), args.drain_seconds)
    text = render(report)
    print(text)
    print(json.dumps([lines[-2:] for lines in report.streams]), file=sys.stderr)
    if args.write:
        write_section(args.write, "shutdown", text)
    ok = report.ended_with_done == len(report.streams) and report.cached_tokens_after_restart
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
