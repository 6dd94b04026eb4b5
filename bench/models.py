"""Many models on one server (issue 18): what a load costs and what two models serving at
once do to each other.

One Hearth with the default model and a second GGUF from a folder (the packaged Q4_1,
served as `second`); both on the same cores. Measured:

- load time of the second model (POST /models/load), first in this run and again with the
  file in the OS page cache (after an unload);
- time to first token of a request to the unloaded second model (its load included), and
  of the same request once it is loaded;
- throughput of two workloads (distinct prompts, 64 output tokens, concurrency 4 each):
  one model after the other, then both models at once.

    python -m bench.models [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from bench.cli import conversations
from bench.load import LoadResult, run_load
from bench.report import write_section
from server.launch import ServerProcess, start_hearth
from server.model_files import packaged_chat_model

SECOND = "second"
OUTPUT_TOKENS = 64
CONCURRENCY = 4
REQUESTS = 12


def _post(url: str, path: str, model: str) -> float:
    started = time.perf_counter()
    r = httpx.post(f"{url}{path}", json={"model": model}, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - started


def _ttft(url: str, model: str) -> float:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say something about rivers."}],
        "max_tokens": 8,
        "stream": True,
    }
    started = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                return time.perf_counter() - started
    raise RuntimeError("no token came")


def _prompts(part: int) -> list:
    """The part-th set of REQUESTS distinct prompts: no phase finds another's prompts in a
    prefix cache."""
    return conversations("unique", REQUESTS * 6, 60)[part * REQUESTS : (part + 1) * REQUESTS]


async def _both(url: str, default: str) -> tuple[LoadResult, LoadResult, float]:
    a, b = _prompts(2), _prompts(3)
    extra = {"ignore_eos": True}
    started = time.perf_counter()
    ra, rb = await asyncio.gather(
        run_load(url, default, a, OUTPUT_TOKENS, CONCURRENCY, extra_body=extra),
        run_load(url, SECOND, b, OUTPUT_TOKENS, CONCURRENCY, extra_body=extra),
    )
    return ra, rb, time.perf_counter() - started


def measure(server: ServerProcess) -> str:
    url = server.url
    default = httpx.get(f"{url}/health").json()["model"]
    first_load = _post(url, "/models/load", SECOND)
    _post(url, "/models/unload", SECOND)
    warm_load = _post(url, "/models/load", SECOND)
    _post(url, "/models/unload", SECOND)
    ttft_unloaded = _ttft(url, SECOND)
    ttft_loaded = _ttft(url, SECOND)
    extra = {"ignore_eos": True}
    # Warm-up of both engines, not counted.
    for model in (default, SECOND):
        asyncio.run(run_load(url, model, _prompts(4)[:2], 8, 2, extra_body=extra))
    started = time.perf_counter()
    one_a = asyncio.run(
        run_load(url, default, _prompts(0), OUTPUT_TOKENS, CONCURRENCY, extra_body=extra)
    )
    one_b = asyncio.run(
        run_load(url, SECOND, _prompts(1), OUTPUT_TOKENS, CONCURRENCY, extra_body=extra)
    )
    sequential = time.perf_counter() - started
    both_a, both_b, together = asyncio.run(_both(url, default))
    tokens = one_a.output_tokens + one_b.output_tokens
    both_tokens = both_a.output_tokens + both_b.output_tokens
    lines = [
        "## Many models: loads, first tokens, two models at once (`python -m bench.models`)",
        "",
        f"The default model ({default}) and the packaged Q4_1 GGUF from a models folder as "
        f"`{SECOND}`, on this machine's cores; {REQUESTS} distinct ~80-token prompts per model, "
        f"{OUTPUT_TOKENS} output tokens, {CONCURRENCY} at a time per model.",
        "",
        "| what | figure |",
        "|---|---|",
        f"| load of `{SECOND}`, first in this run (the OS may hold the file from earlier "
        f"runs: a cold disk read adds its ~100 MB) | {first_load:.2f} s |",
        f"| load again, file in the page cache | {warm_load:.2f} s |",
        f"| first token of a request to `{SECOND}` unloaded (load included) | "
        f"{ttft_unloaded:.2f} s |",
        f"| first token of the same request, `{SECOND}` loaded | {ttft_loaded:.2f} s |",
        f"| one model after the other: output tokens/s | {tokens / sequential:.1f} |",
        f"| both models at once: output tokens/s | {both_tokens / together:.1f} "
        f"({both_tokens / together / (tokens / sequential):.2f}x) |",
        f"| TTFT p50 one at a time / both at once | {one_a.ttft_percentile(50):.2f} s / "
        f"{both_a.ttft_percentile(50):.2f} s |",
        "",
        "Each loaded model has its own engine thread and llama.cpp context on the same "
        "cores; the ratio above is what running them at once gains or loses against one "
        "after the other on this machine.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.models")
    p.add_argument("--write", type=Path, help="put the section into this Markdown file")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "models"
        folder.mkdir()
        (folder / f"{SECOND}.gguf").symlink_to(packaged_chat_model())
        config = Path(tmp) / "models.toml"
        config.write_text(f'[models]\ndir = "{folder}"\nkeep_alive = -1\n')
        server = start_hearth(Path(tmp), "--config", str(config))
        try:
            text = measure(server)
        finally:
            server.stop()
    print(text)
    if args.write:
        write_section(args.write, "models", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
