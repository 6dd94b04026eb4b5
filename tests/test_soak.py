"""A short soak (`make soak` runs the long one): mixed chat, completions and embeddings at
concurrency 32 with a third of the streams dropped midway; afterwards nothing is leaked
and the server's memory is back where a warm-up of the same load left it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.soak import RSS_TOLERANCE, soak
from tests.conftest import RunningServer, start_server, stop_server


@pytest.fixture(scope="module")
def soaked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("soak")
    s = start_server(tmp, "--data-dir", str(tmp), "--parallel", "8")
    yield s
    stop_server(s)


def test_load_with_dropped_streams_leaves_nothing_behind(soaked: RunningServer) -> None:
    report = soak(soaked.url, soaked.proc.process.pid, requests=96, concurrency=32, seed=3)
    load = report.load
    assert load.errors == [], load.errors[:5]
    assert load.dropped > 0 and load.completed + load.dropped == load.requests
    assert report.leaks == []
    assert report.healthy
    # Memory is back where the warm-up left it, but for the KV the RAM tier is meant to
    # keep (bounded by its budget).
    assert report.stats["ram_bytes"] <= report.stats["ram_budget"]
    assert report.rss_growth <= RSS_TOLERANCE, (
        report.rss_before,
        report.rss_after,
        report.ram_before,
        report.ram_after,
    )
