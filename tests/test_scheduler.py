"""The scheduling policy on its own (no model needed: it is bookkeeping over sequences)."""

from __future__ import annotations

from server.engine.request import GenerationRequest
from server.engine.scheduler import Scheduler
from server.engine.sequence import Sequence


def make_seq(n_prompt: int) -> Sequence:
    req = GenerationRequest(
        prompt_tokens=list(range(1, n_prompt + 1)), max_tokens=100, emit=lambda out: None
    )
    return Sequence(req, sampler=None, detokenizer=None)  # type: ignore[arg-type]


def run_plan(sched: Scheduler) -> list[tuple[Sequence, int]]:
    """Apply a plan as the engine would, with a sampled token for finished prefills."""
    plan = sched.schedule()
    for chunk in plan.chunks:
        chunk.seq.n_computed += chunk.n_tokens
        if chunk.seq.n_computed == len(chunk.seq.tokens):
            chunk.seq.tokens.append(7)
    return [(c.seq, c.n_tokens) for c in plan.chunks]


def test_decode_tokens_come_first_and_prompts_are_chunked() -> None:
    released: list[int] = []
    sched = Scheduler(max_running=4, token_budget=64, n_cells=10_000, release_kv=released.append)
    short, long_ = make_seq(10), make_seq(200)
    sched.add(short)
    sched.add(long_)
    assert run_plan(sched) == [(short, 10), (long_, 54)]
    # short now decodes one token per step, ahead of the rest of the long prompt.
    assert run_plan(sched) == [(short, 1), (long_, 63)]
    assert run_plan(sched) == [(short, 1), (long_, 63)]
    assert run_plan(sched) == [(short, 1), (long_, 20)]
    assert run_plan(sched) == [(short, 1), (long_, 1)]
    sched.remove(short)
    assert len(released) == 1 and short.seq_id is None


def test_admission_respects_sequences_and_cells() -> None:
    sched = Scheduler(max_running=2, token_budget=512, n_cells=100, release_kv=lambda s: None)
    a, b, c = make_seq(40), make_seq(40), make_seq(10)
    for s in (a, b, c):
        sched.add(s)
    run_plan(sched)
    assert sched.running == [a, b] and list(sched.waiting) == [c]  # only two ids


def test_big_prompt_waits_for_cells() -> None:
    sched = Scheduler(max_running=4, token_budget=512, n_cells=100, release_kv=lambda s: None)
    a, b = make_seq(60), make_seq(60)
    sched.add(a)
    sched.add(b)
    run_plan(sched)
    assert sched.running == [a] and list(sched.waiting) == [b]
    sched.remove(a)
    run_plan(sched)
    assert sched.running == [b]


def test_preemption_when_cells_run_out() -> None:
    released: list[int] = []
    sched = Scheduler(max_running=2, token_budget=512, n_cells=50, release_kv=released.append)
    a, b = make_seq(20), make_seq(20)
    sched.add(a)
    sched.add(b)
    run_plan(sched)  # both prefilled: 40 cells
    for _ in range(5):
        run_plan(sched)  # 2 cells a step → 50 cells
    assert sched.cells_used == 50
    run_plan(sched)
    # b (the newest) gave its cells back and waits to be recomputed; a goes on.
    assert sched.running == [a] and list(sched.waiting) == [b]
    assert b.n_computed == 0 and len(b.tokens) > 20  # keeps what it generated
    assert len(released) == 1
