"""hearth bench: its statistics on a scripted timeline, and a short real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.load import LoadResult, RequestTiming
from bench.report import summarize
from tests.conftest import RunningServer, hearth_cli


def test_statistics_on_a_scripted_timeline() -> None:
    # Two requests: first tokens at 0.1 s and 0.3 s, then a token every 0.02 / 0.04 s.
    a = RequestTiming(0.1, 0.1 + 4 * 0.02, 5, [0.1 + i * 0.02 for i in range(5)])
    b = RequestTiming(0.3, 0.3 + 4 * 0.04, 5, [0.3 + i * 0.04 for i in range(5)])
    s = summarize("fake", LoadResult(2, 2, 1.0, [a, b]))
    assert s.request_throughput == pytest.approx(2.0)
    assert s.output_throughput == pytest.approx(10.0)
    assert s.latency_ms["ttft"]["mean"] == pytest.approx(200.0)
    assert s.latency_ms["ttft"]["p50"] == pytest.approx(200.0)
    assert s.latency_ms["tpot"]["mean"] == pytest.approx(30.0)
    assert s.latency_ms["itl"]["p50"] == pytest.approx(30.0)  # four 20s and four 40s
    assert s.latency_ms["itl"]["p99"] == pytest.approx(40.0)
    assert s.latency_ms["e2e"]["p90"] == pytest.approx(180 + 0.9 * (460 - 180))


def test_a_short_real_run_writes_every_output(server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "results"
    r = hearth_cli(
        "bench",
        "--url",
        server.url,
        "--workload",
        "shared-prefix",
        "--requests",
        "4",
        "--concurrency",
        "1,2",
        "--output-tokens",
        "8",
        "--out",
        str(out),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    results = json.loads((out / "results.json").read_text())
    assert [x["concurrency"] for x in results] == [1, 2]
    assert all(x["requests"] == 4 and x["output_throughput"] > 0 for x in results)
    assert "TTFT" in (out / "results.md").read_text()
    for png in ("latency.png", "throughput.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_models_sweep(tmp_path: Path) -> None:
    from server.model_files import resolve_chat_model

    out = tmp_path / "sweep"
    r = hearth_cli("bench", "--models", str(resolve_chat_model("")), "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stderr
    (row,) = json.loads((out / "models.json").read_text())
    assert row["prefill_tok_s"] > row["decode_tok_s"] > 0
    assert row["server_tok_s_c8"] > 0 and 1 < row["perplexity"] < 1000
    assert (out / "models.png").read_bytes()[:4] == b"\x89PNG"


def test_embeddings_workload(server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    r = hearth_cli(
        "bench",
        "--url",
        server.url,
        "--workload",
        "embeddings",
        "--requests",
        "6",
        "--concurrency",
        "1,3",
        "--out",
        str(out),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads((out / "results.json").read_text())
    assert [x["concurrency"] for x in rows] == [1, 3]
    assert all(x["texts_per_second"] > 0 and x["latency_ms"]["p50"] > 0 for x in rows)
    # Batched as LangChain sends them: 4 texts a request (two requests).
    batched = tmp_path / "batched"
    r = hearth_cli(
        "bench",
        "--url",
        server.url,
        "--workload",
        "embeddings",
        "--requests",
        "8",
        "--per-request",
        "4",
        "--concurrency",
        "2",
        "--out",
        str(batched),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    (row,) = json.loads((batched / "results.json").read_text())
    assert row["texts_per_request"] == 4 and row["texts_per_second"] > 0
    assert len(row["latency_ms"]) and row["latency_ms"]["p50"] > 0


@pytest.mark.timeout(2400)
def test_peers_run_the_same_workload(server: RunningServer, tmp_path: Path) -> None:
    """--peers starts llama-server (built once into the user's cache: ~6 min the first time)
    and llama-cpp-python's server on Hearth's model file and runs the same requests."""
    out = tmp_path / "peers"
    r = hearth_cli(
        "bench",
        "--url",
        server.url,
        "--label",
        "hearth",
        "--workload",
        "unique",
        "--requests",
        "2",
        "--concurrency",
        "1,2",
        "--output-tokens",
        "48",
        "--peers",
        "--out",
        str(out),
        timeout=2400,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())
    assert [(x["label"], x["concurrency"]) for x in rows] == [
        (label, c) for label in ("hearth", "llama-server", "llama-cpp-python") for c in (1, 2)
    ]
    # EOS suppressed on every server (ignore_eos, or a logit bias for llama-cpp-python):
    # each request generated exactly the tokens asked for.
    assert all(x["failures"] == 0 and x["output_tokens"] == 2 * 48 for x in rows), rows
    for peer in ("llama-server", "llama-cpp-python"):
        for c in (1, 2):
            assert f"hearth / {peer} at concurrency {c}:" in r.stdout


def test_short_output_is_flagged() -> None:
    from bench.cli import short_output_warnings

    full = RequestTiming(0.1, 1.0, 8, [0.1, 1.0])
    short = RequestTiming(0.1, 1.0, 3, [0.1, 1.0])
    ok = summarize("a", LoadResult(1, 2, 1.0, [full, full]))
    stopped = summarize("b", LoadResult(1, 2, 1.0, [full, short]))
    assert short_output_warnings([ok], 8) == []
    (line,) = short_output_warnings([ok, stopped], 8)
    assert line.startswith("warning: b at concurrency 1 generated 11 of 16 tokens")


def test_peer_ratio_lines() -> None:
    from bench.cli import ratio_lines

    def run(label: str, c: int, tok_s: float):
        timing = RequestTiming(0.1, 1.0, int(tok_s), [0.1, 1.0])
        return summarize(label, LoadResult(c, 1, 1.0, [timing]))

    lines = ratio_lines(
        [
            run("hearth", 1, 120),
            run("hearth", 8, 240),
            run("llama-server", 1, 100),
            run("llama-server", 8, 200),
        ]
    )
    assert lines == [
        "hearth / llama-server at concurrency 1: 1.20x output tokens/s",
        "hearth / llama-server at concurrency 8: 1.20x output tokens/s",
    ]


def test_sustained_load_and_tier_workloads(tmp_path: Path) -> None:
    """bench.tiers end to end at a small scale: sustained load against llama-server (closed
    and Poisson), idle-cache decode with the tier on and off, returning conversations."""
    from bench.tiers import main

    report = tmp_path / "benchmarks.md"
    args = ["--requests", "4", "--concurrency", "3", "--output-tokens", "8", "--rounds", "1"]
    args += ["--idle-tokens", "1000", "--decode-tokens", "8", "--conversations", "2"]
    args += ["--long-requests", "3"]
    args += ["--write", str(report)]
    assert main(args) == 0
    text = report.read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if "|" in line}
    for key in ("hearth", "llama-server"):
        assert key in rows
    assert "closed loop, Hearth / llama-server" in text and "open loop" in text
    assert "long prompts, Hearth / llama-server" in text and "4-12 tokens asked" in text

    def cells_before(tier: str) -> int:
        row = next(v for k, v in rows.items() if "tokens idle" in k and tier in k)
        return int(row.split("|")[2].replace(",", ""))

    # Idle entries: in the KV cells without the tier, all in RAM with it.
    assert cells_before("tier off") > 800 and cells_before("tier on") == 0, text
    # Returning turns: served from RAM with the tier on (restores > 0), recomputed without.
    on_row, off_row = rows["tier on"].split("|"), rows["tier off"].split("|")
    assert int(on_row[3].replace(",", "")) > 1000 and int(on_row[4]) > 0
    assert int(off_row[4]) == 0
