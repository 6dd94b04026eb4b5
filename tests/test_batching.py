"""Continuous batching and cancellation, observed from outside the server."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from tests.conftest import RunningServer


async def _stream_one(client: openai.AsyncOpenAI, model_id: str, i: int) -> list[float]:
    """Arrival times of each content chunk of one streamed request."""
    times = []
    stream = await client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": f"Count from {i} upwards."}],
        max_tokens=32,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.monotonic())
    return times


def test_eight_streams_progress_together(server: RunningServer, model_id: str) -> None:
    before = server.stats()

    async def main() -> list[list[float]]:
        client = server.async_client()
        return await asyncio.gather(*(_stream_one(client, model_id, i) for i in range(8)))

    timelines = asyncio.run(main())
    after = server.stats()
    assert all(len(t) >= 24 for t in timelines), [len(t) for t in timelines]
    # All streams were under way at once: every stream got its first token before any
    # stream got its last one.
    first_tokens = max(t[0] for t in timelines)
    last_tokens = min(t[-1] for t in timelines)
    assert first_tokens < last_tokens
    # And the engine says its steps held several sequences in one llama_decode.
    assert after["multi_sequence_steps"] - before["multi_sequence_steps"] >= 20
    assert after["max_sequences_in_step"] >= 4
    assert after["running"] == 0


def _wait_idle(server: RunningServer, timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = server.stats()
        if stats["running"] == 0 and stats["waiting"] == 0:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"engine still busy: {server.stats()}")


def test_client_disconnect_frees_the_sequence(server: RunningServer, model_id: str) -> None:
    body = {
        "model": model_id,
        "messages": [{"role": "user", "content": "Write a very long essay."}],
        "max_tokens": 1500,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body) as r:
        lines = r.iter_lines()  # held, not abandoned: closing it would hang up early
        data = [line for line in (next(lines) for _ in range(10)) if line.startswith("data: {")]
        assert len(data) == 5
        assert server.stats()["running"] == 1
    # The connection is closed here, long before 1500 tokens.
    t0 = time.monotonic()
    stats = _wait_idle(server)
    assert time.monotonic() - t0 < 5
    # Nothing but what the prefix cache keeps between requests.
    assert stats["cells_used"] == stats["cache_cells"]
    # And the server keeps serving.
    r = httpx.post(
        f"{server.base_url}/chat/completions",
        json={"model": model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
    )
    assert r.status_code == 200


def test_non_stream_disconnect_cancels_too(server: RunningServer, model_id: str) -> None:
    body = {
        "model": model_id,
        "messages": [{"role": "user", "content": "Write at length."}],
        "max_tokens": 1900,
        "ignore_eos": True,
    }
    # 1900 tokens take over 10 s here; the client gives up after 1 s.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=1.0)
    _wait_idle(server, timeout=3)


def test_health_reports_engine(server: RunningServer) -> None:
    body = httpx.get(f"{server.url}/health").json()
    assert body["status"] == "ok"
    assert json.dumps(body["engine"])
    assert body["engine"]["max_running"] == 8


def test_prometheus_metrics(server: RunningServer) -> None:
    r = httpx.get(f"{server.url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    lines = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in r.text.splitlines()
        if line and not line.startswith("#")
    }
    stats = server.stats()
    model = f'{{model="{server.model_id()}"}}'  # each loaded chat model's own series
    assert lines[f"hearth_engine_steps_total{model}"] >= 1
    assert lines[f"hearth_kv_cells{model}"] == stats["n_cells"]
    assert f"hearth_prefix_cache_hit_tokens_total{model}" in lines
    assert lines["hearth_models_loaded"] >= 1
    assert "hearth_embedding_inputs_total" in lines
