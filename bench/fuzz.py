"""`make fuzz`: schemathesis over the whole API of a live Hearth server, phase by phase.

Each phase (schema examples, boundary coverage, random fuzzing, stateful sequences that
follow the OpenAPI links, and examples and fuzzing from OpenAI's own request schemas) runs as
its own schemathesis process; between phases the
server must answer /health with 200 and serve a normal chat completion. Any 5xx, network
error or request slower than the timeout fails the run. The suite runs the same phases
with few examples (tests/test_fuzz.py); this runs many and prints the figures for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.report import write_section
from bench.servers import ROOT, start_hearth

PHASES = ("examples", "coverage", "fuzzing", "stateful", "openai")
# make fuzz also runs this one: OpenAI's schemas' boundary cases, ~33,000 requests without
# /responses/compact (whose every valid request makes a summary: minutes more).
THOROUGH_PHASES = (*PHASES, "openai-coverage")
# The "openai" phase: what OpenAI's own request schemas allow (its published OpenAPI
# document cut to the endpoints Hearth serves), sent to Hearth's /v1.
OPENAI_SCHEMA = ROOT / "tests" / "fixtures" / "openai_openapi.json"
# A server that answers fast whatever the fuzzer asks: short contexts and completions, few
# completions per request, small uploads. Every limit stays on.
FUZZ_CONFIG = """\
[model]
n_ctx = 2048
context_length = 256
[engine]
max_running = 4
default_max_tokens = 4
[server]
max_choices_per_request = 4
[retrieval]
max_upload_mb = 1
"""
REQUEST_TIMEOUT = 60


@dataclass
class PhaseResult:
    phase: str
    returncode: int
    output: str
    requests: int
    server_errors: int
    seconds: float


def run_phase(
    url: str, api_key: str, phase: str, max_examples: int, seed: int, report_dir: Path
) -> PhaseResult:
    report = report_dir / f"{phase}.ndjson"
    if phase == "openai":
        where = [str(OPENAI_SCHEMA), "--url", f"{url}/v1"]
        phases = "examples,fuzzing"
    elif phase == "openai-coverage":
        where = [str(OPENAI_SCHEMA), "--url", f"{url}/v1", "--exclude-path", "/responses/compact"]
        phases = "coverage"
    else:
        where, phases = [f"{url}/openapi.json"], phase
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        *where,
        "--phases",
        phases,
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--request-timeout",
        str(REQUEST_TIMEOUT),
        "--workers",
        "1",
        "--header",
        f"Authorization: Bearer {api_key}",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        "--suppress-health-check",
        "all",
    ]
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    requests, server_errors = _count(report)
    return PhaseResult(
        phase,
        done.returncode,
        done.stdout + done.stderr,
        requests,
        server_errors,
        time.monotonic() - started,
    )


def _count(report: Path) -> tuple[int, int]:
    """Requests sent and 5xx answers received, from schemathesis' NDJSON event log."""
    requests = server_errors = 0
    if not report.exists():
        return 0, 0
    for line in report.read_text().splitlines():
        for status in _statuses(json.loads(line)):
            requests += 1
            server_errors += status >= 500
    return requests, server_errors


def _statuses(event: object) -> list[int]:
    """Every HTTP status recorded anywhere in one event (responses nest deeply)."""
    found: list[int] = []
    stack = [event]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            response = node.get("response")
            if isinstance(response, dict) and isinstance(response.get("status_code"), int):
                found.append(response["status_code"])
            stack.extend(v for k, v in node.items() if k != "response")
        elif isinstance(node, list):
            stack.extend(node)
    return found


def check_server(url: str, api_key: str) -> None:
    health = httpx.get(f"{url}/health", timeout=10)
    if health.status_code != 200:
        raise RuntimeError(f"/health answered {health.status_code}: {health.text}")
    r = httpx.post(
        f"{url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=60,
    )
    if r.status_code != 200:
        raise RuntimeError(f"a normal request failed after fuzzing: {r.status_code} {r.text}")


def render(results: list[PhaseResult], max_examples: int, seed: int) -> str:
    lines = [
        "## Fuzzing the whole API (`make fuzz`)",
        "",
        f"schemathesis over `/openapi.json`, {max_examples} examples per operation and phase, "
        f"seed {seed}, check `not_a_server_error`, {REQUEST_TIMEOUT} s per request; after "
        "every phase `/health` must answer 200 and a normal chat completion must succeed.",
        "",
        "| phase | requests | 5xx | failures | seconds |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        failures = 0 if r.returncode == 0 else "see log"
        lines.append(
            f"| {r.phase} | {r.requests} | {r.server_errors} | {failures} | {r.seconds:.0f} |"
        )
    total = sum(r.requests for r in results)
    lines += ["", f"{total} requests in all; the server stayed healthy after every phase.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--write", type=Path, help="put the figures into this Markdown file")
    args = parser.parse_args()
    api_key = "sk-fuzz"
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        config = tmp_dir / "fuzz.toml"
        config.write_text(FUZZ_CONFIG)
        server = start_hearth(
            tmp_dir, "--config", str(config), "--data-dir", str(tmp_dir), "--api-key", api_key
        )
        results = []
        try:
            for phase in THOROUGH_PHASES:
                result = run_phase(
                    server.url, api_key, phase, args.max_examples, args.seed, tmp_dir
                )
                results.append(result)
                print(
                    f"{phase}: {result.requests} requests, {result.server_errors} 5xx, "
                    f"exit {result.returncode}, {result.seconds:.0f} s",
                    flush=True,
                )
                if result.returncode != 0:
                    print(result.output[-8000:], file=sys.stderr)
                check_server(server.url, api_key)
        finally:
            server.stop()
    report = render(results, args.max_examples, args.seed)
    print(report)
    if args.write:
        write_section(args.write, "fuzz", report)
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
