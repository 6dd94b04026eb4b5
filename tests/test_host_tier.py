"""The prefix cache's host-RAM tier, driven step by step over the real model: idle entries
leave the KV cells for RAM, a matching request gets them back instead of prefilling, the
budget holds, and nothing leaks when requests are cancelled."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.engine import cache_store
from server.engine.engine import Engine
from server.engine.request import FinishReason
from server.llama.model import LlamaModel
from server.model_files import resolve_chat_model
from tests.test_engine_steps import idle, make_engine, run_until, submit


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    m = LlamaModel(resolve_chat_model(""))
    yield m
    m.close()


@pytest.fixture
def tiered(model: LlamaModel) -> Iterator[Engine]:
    e = make_engine(model, cache_ram_bytes=256 << 20)
    yield e
    e.stop()


def prompt(engine: Engine, tag: str, words: int = 80) -> list[int]:
    text = f"Notes of {tag}: " + " ".join(f"{tag}-{i}" for i in range(words))
    return engine.model.tokenize(text, True)


def first_token(engine: Engine, tokens: list[int]) -> tuple[dict[int, float], int]:
    """The first generated token's top-5 probabilities, and the prompt tokens reused."""
    _, out = submit(engine, tokens, max_tokens=1, logprobs=5)
    run_until(engine, out)
    lp = next(o.logprobs[0] for o in out if o.logprobs)
    return {t: math.exp(p) for t, p in lp.top}, out.last.cached_tokens


def test_idle_entries_wait_in_ram_and_come_back(tiered: Engine, model: LlamaModel) -> None:
    base = prompt(tiered, "alpha")
    _, first = submit(tiered, base, max_tokens=4)
    run_until(tiered, first)
    idle(tiered)
    stats = tiered.stats
    assert stats.cache_cells == 0 and stats.ram_entries == 1  # out of the cells
    assert stats.ram_bytes > 1000 * len(base)  # ~23 KB a token for this model
    # A longer prompt along the same path is served from RAM, not prefilled.
    longer = base + model.tokenize(" and then more", False)
    restored, cached = first_token(tiered, longer)
    assert cached >= len(base)
    assert tiered.stats.cache.ram_hits == 1 and tiered.stats.tier.restores == 1
    idle(tiered)
    # The same distribution as computing it all again (batch shapes aside).
    fresh = make_engine(model, cache_entries=0)
    try:
        recomputed, cached = first_token(fresh, longer)
        assert cached == 0
    finally:
        fresh.stop()
    best = max(recomputed, key=recomputed.get)  # type: ignore[arg-type]
    assert max(restored, key=restored.get) == best  # type: ignore[arg-type]
    assert abs(restored[best] - recomputed[best]) < 0.05


def test_the_ram_budget_holds_under_a_flood(model: LlamaModel) -> None:
    engine = make_engine(model, cache_ram_bytes=12 << 20)  # room for ~5 of these entries
    try:
        outs = [submit(engine, prompt(engine, f"flood{i}", 40), max_tokens=2)[1] for i in range(16)]
        run_until(engine, *outs, limit=2000)
        idle(engine)
        host = engine.scheduler.cache.host
        assert 0 < host.bytes <= host.budget
        assert host.stats.dropped > 0 and len(host.entries) < 16
        assert host.bytes == sum(e.size for e in host.entries.values())
        # The newest is still there; the oldest went.
        _, cached = first_token(engine, prompt(engine, "flood15", 40))
        assert cached > 40
        _, cached = first_token(engine, prompt(engine, "flood0", 40))
        assert cached < 10
    finally:
        engine.stop()


def test_cancelling_restored_requests_leaks_nothing(tiered: Engine) -> None:
    base = prompt(tiered, "gamma", 120)
    _, out = submit(tiered, base, max_tokens=2)
    run_until(tiered, out)
    idle(tiered)
    ram_before = tiered.stats.ram_bytes
    for _ in range(3):
        request, out = submit(tiered, [*base, 13, 14, 15], max_tokens=50, ignore_eos=True)
        tiered.step()  # admitted: restored from RAM, prefill of the rest started
        assert tiered.stats.tier.restores >= 1
        tiered.cancel(request)
        run_until(tiered, out)
        assert out.last.finish_reason is FinishReason.CANCELLED
        idle(tiered)
    host = tiered.scheduler.cache.host
    assert host.bytes == sum(e.size for e in host.entries.values())
    assert tiered.stats.cache_cells == 0 and tiered.stats.ram_bytes >= ram_before


def test_a_conversation_is_kept_in_ram_once_not_once_per_turn(
    tiered: Engine, model: LlamaModel
) -> None:
    first = prompt(tiered, "epsilon")
    history, previous = list(first), 0
    for turn in range(3):
        _, out = submit(tiered, history, max_tokens=20, ignore_eos=True)
        run_until(tiered, out)
        idle(tiered)
        if turn:  # the earlier turns came back from RAM, not prefilled again
            assert out.last.cached_tokens >= previous
        previous = len(history)
        history += [t for o in out for t in o.token_ids]
        if turn == 0:
            per_token = tiered.stats.ram_bytes / (len(history) - 1)
        history += model.tokenize(f" Turn {turn}: go on.", False)
    # Each turn's entry holds only what the turn added: the RAM holds the conversation's
    # KV once (a whole copy per turn would be ~2x for three turns).
    tier = tiered.stats.tier
    assert tier.spills == 3 and tiered.stats.ram_entries == 3
    assert tiered.stats.ram_bytes < 1.1 * per_token * len(history)
    # The first turn alone is still served from RAM: it is a prefix of the path kept.
    _, cached = first_token(tiered, first)
    assert cached >= len(first) - 1


def ask_two_at_once(engine: Engine, model: LlamaModel) -> list[int]:
    """Two questions after one system prompt, at once; returns the first's prompt. The
    first to finish leaves while the other still holds the system prompt, so only its own
    end is copied out; the other, the last holder, copies all of its path."""
    system = prompt(engine, "zeta", 150)
    one = " Question one: what do the notes say about zeta-3, zeta-4, zeta-5 and zeta-6?"
    two = " Question two: and what about zeta-70, zeta-71 and zeta-72, in that order?"
    short = [*system, *model.tokenize(one, False)]
    long = [*system, *model.tokenize(two, False)]
    _, a = submit(engine, short, max_tokens=2, ignore_eos=True)
    _, b = submit(engine, long, max_tokens=12, ignore_eos=True)
    run_until(engine, a, b)
    idle(engine)
    tier = engine.stats.tier
    assert tier.spills == 2 and engine.stats.ram_entries == 2
    assert tier.spilled_tokens < len(short) + len(long) - len(system) + 20
    return short


def test_a_shared_system_prompt_is_kept_in_ram_once(tiered: Engine, model: LlamaModel) -> None:
    short = ask_two_at_once(tiered, model)
    # The first question comes back from two entries: the system prompt from one, its own
    # end from the other; the next token is what computing it all again gives.
    follow_up = [*short, *model.tokenize(" Answer:", False)]
    restored, cached = first_token(tiered, follow_up)
    assert cached >= len(short) and tiered.stats.tier.restores == 1
    fresh = make_engine(model, cache_entries=0)
    try:
        recomputed, _ = first_token(fresh, follow_up)
    finally:
        fresh.stop()
    best = max(recomputed, key=recomputed.get)  # type: ignore[arg-type]
    assert max(restored, key=restored.get) == best  # type: ignore[arg-type]
    assert abs(restored[best] - recomputed[best]) < 0.05


def test_both_parts_of_a_shared_prompt_survive_a_restart(model: LlamaModel, tmp_path: Path) -> None:
    before = make_engine(model, cache_ram_bytes=256 << 20, cache_dir=tmp_path / "kv")
    try:
        short = ask_two_at_once(before, model)
    finally:
        before.stop()  # saves the cache
    manifest = json.loads((tmp_path / "kv" / "manifest.json").read_text())
    assert sorted(manifest["starts"])[0] == 0 and sorted(manifest["starts"])[1] > 0
    after = make_engine(model, cache_ram_bytes=256 << 20, cache_dir=tmp_path / "kv")
    try:
        assert cache_store.load(after.ctx, after.scheduler, tmp_path / "kv", after.stats.disk) == 2
        _, cached = first_token(after, [*short, *model.tokenize(" Answer:", False)])
        assert cached >= len(short)
    finally:
        after.stop()


def test_entries_below_a_short_shared_head_outlive_its_last_holder(
    tiered: Engine, model: LlamaModel
) -> None:
    """A head shared by every prompt (a chat template's first tokens) is copied out by
    nobody while others hold it; when its last holder leaves, the entries below it must not
    go with it, even where that holder's own run is cut in two by a stored node."""
    head = model.tokenize("Shared head:", True)
    branch = model.tokenize(" branch", False)

    def doc(tag: str) -> list[int]:
        return model.tokenize(" " + " ".join(f"{tag}-{i}" for i in range(60)), False)

    x = [*head, *branch, *doc("xi")]
    y = [*head, *model.tokenize(" other", False), *doc("ypsilon")]
    last = [*head, *branch, *doc("lambda")]
    _, out_x = submit(tiered, x, max_tokens=2, ignore_eos=True)
    _, out_y = submit(tiered, y, max_tokens=8, ignore_eos=True)
    run_until(tiered, out_x)  # x leaves while y holds the head: only its own run goes out
    _, out_last = submit(tiered, last, max_tokens=30, ignore_eos=True)  # shares head+branch
    run_until(tiered, out_y, out_last)  # y leaves, then the last holder of the head
    idle(tiered)
    assert tiered.stats.ram_entries == 3 and tiered.stats.tier.dropped == 0
    _, cached = first_token(tiered, [*x, *model.tokenize(" More.", False)])
    assert cached >= len(x)


def test_making_room_for_a_restore_can_move_the_match_out_of_the_cells(
    model: LlamaModel,
) -> None:
    """A prompt matches a resident entry and, further, an entry in RAM; restoring needs
    room, and the room comes from evicting that resident entry. The admission must look
    again rather than share cells that are gone."""
    engine = make_engine(
        model, n_ctx=1024, context_length=1024, cache_ram_bytes=256 << 20, cache_cells=1000
    )
    try:
        base = prompt(engine, "eta", 120)
        longer = [*base, *model.tokenize(" " + " ".join(f"eta+{i}" for i in range(60)), False)]
        _, out = submit(engine, longer, max_tokens=2)
        run_until(engine, out)
        assert engine.scheduler._evict_one()  # into RAM: the longer path
        _, out = submit(engine, [*base, *model.tokenize(" Short.", False)], max_tokens=2)
        run_until(engine, out)  # the base restored from RAM, now resident in an entry
        idle(engine)
        assert engine.stats.cache_cells > len(base) and engine.stats.ram_entries == 1
        probe = [*longer, *model.tokenize(" And more.", False)]
        _, cached = first_token(engine, probe)
        assert cached >= len(longer)
        idle(engine)
    finally:
        engine.stop()


def test_without_the_tier_idle_entries_keep_their_cells(model: LlamaModel) -> None:
    engine = make_engine(model)  # cache_ram_bytes 0: the tier is off
    try:
        _, out = submit(engine, prompt(engine, "delta"), max_tokens=4)
        run_until(engine, out)
        idle(engine)
        assert engine.stats.cache_cells > 0 and engine.stats.ram_entries == 0
    finally:
        engine.stop()


def test_spill_only_when_copying_costs_less_than_computing() -> None:
    from server.engine.host_kv import SpillPolicy

    policy = SpillPolicy()
    assert policy.worth_spilling()  # nothing measured yet
    policy.observe_prefill(seconds=0.3, tokens=100)  # CPU-like: 3 ms a token
    policy.observe_spill(seconds=0.002, tokens=200)  # 10 us a token
    assert policy.worth_spilling()
    gpu = SpillPolicy()
    gpu.observe_prefill(seconds=0.005, tokens=100)  # 50 us a token
    gpu.observe_spill(seconds=0.09, tokens=250)  # 360 us a token: scattered cells
    assert not gpu.worth_spilling()


def test_entries_not_worth_spilling_are_dropped(model: LlamaModel) -> None:
    engine = make_engine(model, cache_ram_bytes=256 << 20)
    try:
        policy = engine.scheduler.cache.host.policy
        policy.observe_spill(seconds=1.0, tokens=10)  # as if a copy were very slow here
        policy.observe_prefill(seconds=0.001, tokens=10)
        _, out = submit(engine, prompt(engine, "gamma"), max_tokens=4)
        run_until(engine, out)
        idle(engine)
        assert engine.stats.ram_entries == 0 and engine.stats.tier.spills == 0
        assert engine.stats.tier.not_worth_spilling >= 1
        assert engine.stats.cache_cells == 0  # dropped, not kept in the cells either
    finally:
        engine.stop()


def test_on_a_gpu_idle_entries_keep_their_cells(model: LlamaModel) -> None:
    gpu = make_engine(model, cache_ram_bytes=256 << 20, on_gpu=True)
    cpu = make_engine(model, cache_ram_bytes=256 << 20)
    try:
        assert gpu.scheduler.cache_cells == gpu.ctx.n_ctx // 2
        assert cpu.scheduler.cache_cells == 0
    finally:
        gpu.stop()
        cpu.stop()
