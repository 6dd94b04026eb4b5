"""The shared prompt-prefix KV cache, observed through the API and the engine's counters."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import RunningServer, start_server, stop_server


def system_prompt(tag: str, words: int = 300) -> str:
    """A long, unique system prompt (unique so no earlier test has cached it)."""
    body = " ".join(f"{tag}-{i}" for i in range(words // 2))
    return f"You are assistant {tag}. Follow these reference notes carefully: {body}"


def chat(client: openai.OpenAI, model: str, messages: list[dict], **kwargs: object):
    return client.chat.completions.create(model=model, messages=messages, temperature=0, **kwargs)  # type: ignore[arg-type]


SOLO = {"speculative": False}


def cached(r) -> int:
    return r.usage.prompt_tokens_details.cached_tokens


def test_second_request_reuses_the_system_prompt(client: openai.OpenAI, model_id: str) -> None:
    sys_msg = {"role": "system", "content": system_prompt("alpha")}
    first = chat(
        client, model_id, [sys_msg, {"role": "user", "content": "What is 2+2?"}], max_tokens=4
    )
    second = chat(
        client, model_id, [sys_msg, {"role": "user", "content": "Name a fruit."}], max_tokens=4
    )
    assert first.usage.prompt_tokens > 300
    assert cached(first) < 20  # at most the template's opening tokens were known
    # Everything up to where the user's question begins came from the cache.
    assert cached(second) >= first.usage.prompt_tokens - 15
    assert cached(second) < second.usage.prompt_tokens


def test_multi_turn_reuses_the_previous_turn(client: openai.OpenAI, model_id: str) -> None:
    messages = [
        {"role": "system", "content": system_prompt("beta", 100)},
        {"role": "user", "content": "Tell me about the sea."},
    ]
    turn1 = chat(client, model_id, messages, max_tokens=30)
    answer = turn1.choices[0].message.content
    messages += [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And about rivers?"},
    ]
    turn2 = chat(client, model_id, messages, max_tokens=5)
    # The whole first prompt, and the answer as far as it re-tokenizes the same way.
    assert cached(turn2) >= turn1.usage.prompt_tokens
    assert cached(turn2) >= turn1.usage.prompt_tokens + turn1.usage.completion_tokens // 2


def test_branch_in_the_middle_of_a_cached_span(client: openai.OpenAI, model_id: str) -> None:
    base = system_prompt("gamma", 120)
    a = chat(
        client,
        model_id,
        [
            {"role": "system", "content": base + " Part one: red green blue."},
            {"role": "user", "content": "Go."},
        ],
        max_tokens=3,
    )
    # Shares a's prompt up to the middle of what a cached in one piece.
    b = chat(
        client,
        model_id,
        [
            {"role": "system", "content": base + " Part two: cyan."},
            {"role": "user", "content": "Go."},
        ],
        max_tokens=3,
    )
    c = chat(
        client,
        model_id,
        [
            {"role": "system", "content": base + " Part one: red green."},
            {"role": "user", "content": "Go."},
        ],
        max_tokens=3,
    )
    assert cached(b) >= 120 and cached(b) < a.usage.prompt_tokens
    assert cached(c) > cached(b)  # follows a's branch further
    for r in (a, b, c):
        assert r.choices[0].finish_reason in ("stop", "length")


def test_cached_logits_agree_with_scratch(client: openai.OpenAI, model_id: str) -> None:
    messages = [
        {"role": "system", "content": system_prompt("delta", 200)},
        {"role": "user", "content": "Say one word."},
    ]
    kwargs = dict(max_tokens=1, logprobs=True, top_logprobs=5)
    scratch = chat(client, model_id, messages, **kwargs)
    reused = chat(client, model_id, messages, **kwargs)
    assert cached(scratch) < 20 and cached(reused) == reused.usage.prompt_tokens - 1
    top_a = {t.token: t.logprob for t in scratch.choices[0].logprobs.content[0].top_logprobs}
    top_b = {t.token: t.logprob for t in reused.choices[0].logprobs.content[0].top_logprobs}
    assert max(top_a, key=top_a.get) == max(top_b, key=top_b.get)
    # llama.cpp's results depend a little on how a prompt was split into batches; the
    # probabilities must agree within that noise, not bit for bit.
    for token in set(top_a) & set(top_b):
        assert abs(math.exp(top_a[token]) - math.exp(top_b[token])) < 0.05


def _concurrent_shared_prefix(
    server: RunningServer, model_id: str, tag: str, n: int = 8
) -> tuple[int, int]:
    """n requests at once with one new long system prompt: (prompt tokens the engine
    computed, prompt tokens of one request)."""
    sys_msg = {"role": "system", "content": system_prompt(tag, 120)}
    before = server.stats()["prompt_tokens_processed"]

    async def main() -> list:
        client = server.async_client()
        return await asyncio.gather(
            *(
                client.chat.completions.create(
                    model=model_id,
                    max_tokens=4,
                    temperature=0,
                    messages=[sys_msg, {"role": "user", "content": f"Question number {i}?"}],
                )
                for i in range(n)
            )
        )

    results = asyncio.run(main())
    computed = server.stats()["prompt_tokens_processed"] - before
    return computed, max(r.usage.prompt_tokens for r in results)


def test_shared_prefix_is_prefilled_once(server: RunningServer, model_id: str) -> None:
    computed, prompt = _concurrent_shared_prefix(server, model_id, "epsilon")
    assert prompt > 250
    # One prompt, plus eight short questions (about 10 tokens each), not eight prompts.
    assert computed < prompt + 8 * 15, (computed, prompt)
    stats = server.stats()
    assert stats["running"] == 0
    assert stats["cells_used"] == stats["cache_cells"]  # no cell left behind


@pytest.fixture(scope="module")
def uncached_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    s = start_server(tmp_path_factory.mktemp("nocache"), "--no-cache", "--n-ctx", "8192")
    yield s
    stop_server(s)


def test_without_cache_each_request_prefills(uncached_server: RunningServer) -> None:
    computed, prompt = _concurrent_shared_prefix(
        uncached_server, uncached_server.model_id(), "zeta", n=4
    )
    assert computed >= 4 * prompt
    assert uncached_server.stats()["cache"]["hits"] == 0


def test_cache_survives_a_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("persist")
    cache_dir = tmp / "kv"
    messages = [
        {"role": "system", "content": system_prompt("iota", 150)},
        {"role": "user", "content": "Hello?"},
    ]
    first = start_server(tmp, "--cache-dir", str(cache_dir))
    try:
        # Not drafted: how long a draft is depends on measured step times, and the answers
        # below are compared token for token (this test is about the restored KV).
        r1 = chat(first.client(), first.model_id(), messages, max_tokens=3, extra_body=SOLO)
    finally:
        stop_server(first)  # SIGTERM: graceful shutdown writes the cache
    assert (cache_dir / "manifest.json").exists()
    second = start_server(tmp, "--cache-dir", str(cache_dir))
    try:
        # Back in the host-RAM tier, not in the cells (restart -> disk -> RAM -> cells).
        stats = second.stats()
        assert stats["ram_entries"] >= 1 and stats["cache_cells"] == 0
        disk = stats["disk"]
        assert disk["loaded_entries"] == stats["ram_entries"]
        assert disk["loaded_bytes"] == stats["ram_bytes"] > 0
        r2 = chat(second.client(), second.model_id(), messages, max_tokens=3, extra_body=SOLO)
        assert cached(r2) == r2.usage.prompt_tokens - 1
        after = second.stats()
        assert after["cache"]["ram_hits"] == 1 and after["tier"]["restores"] == 1
        assert after["tier"]["restore_seconds"] > 0
        # /metrics shows every tier.
        metrics = httpx.get(f"{second.url}/metrics").text
        for name in (
            "hearth_prefix_cache_cells",
            "hearth_prefix_cache_ram_bytes",
            f'hearth_prefix_cache_ram_restores_total{{model="{second.model_id()}"}} 1.0',
            "hearth_prefix_cache_ram_hit_tokens_total",
            "hearth_prefix_cache_disk_loaded_bytes",
        ):
            assert name in metrics, name
        assert r2.choices[0].message.content == r1.choices[0].message.content
    finally:
        stop_server(second)
