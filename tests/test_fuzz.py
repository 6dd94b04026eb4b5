"""The whole API under a fuzzer: schemathesis reads /openapi.json and sends what the
schemas allow and what they do not. Zero 5xx, zero hangs, and the server is healthy and
still answers a normal request after every phase.

Bounded here so it fits CI (`make fuzz` runs the same with many more examples and records
its figures in docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bench.fuzz import FUZZ_CONFIG, PHASES, run_phase
from tests.conftest import RunningServer, start_server, stop_server

KEY = "sk-fuzz"
EXAMPLES = 12


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("fuzz")
    config = tmp / "fuzz.toml"
    config.write_text(FUZZ_CONFIG)
    s = start_server(tmp, "--config", str(config), "--data-dir", str(tmp / "data"), api_key=KEY)
    yield s
    stop_server(s)


@pytest.mark.parametrize("phase", PHASES)
def test_no_input_breaks_the_server(fuzz_target: RunningServer, phase: str, tmp_path) -> None:
    result = run_phase(fuzz_target.url, KEY, phase, EXAMPLES, seed=11, report_dir=tmp_path)
    assert result.returncode == 0, result.output[-6000:]
    assert result.server_errors == 0
    health = httpx.get(f"{fuzz_target.url}/health", timeout=10)
    assert health.status_code == 200, health.text
    r = httpx.post(
        f"{fuzz_target.base_url}/chat/completions",
        json={"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
