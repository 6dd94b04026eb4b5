"""The scheduling policy on its own, over a real llama.cpp context's KV operations."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.engine.no_cache import NoCache
from server.engine.prefix_cache import PrefixCache
from server.engine.request import GenerationRequest
from server.engine.scheduler import Chunk, Scheduler, StepPlan
from server.engine.sequence import Sequence
from server.llama.context import ContextParams, LlamaContext
from server.llama.model import LlamaModel
from server.model_files import resolve_chat_model


@pytest.fixture(scope="module")
def ctx() -> Iterator[LlamaContext]:
    model = LlamaModel(resolve_chat_model(""))
    context = LlamaContext(
        model, ContextParams(n_ctx=1024, n_seq_max=8, n_batch=64, n_ubatch=64, n_threads=2)
    )
    yield context
    context.close()
    model.close()


class RecordingKV:
    """The real context's KV operations, remembering which sequences were dropped."""

    def __init__(self, ctx: LlamaContext) -> None:
        self.ctx = ctx
        self.removed: list[int] = []

    def seq_copy(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        self.ctx.seq_copy(src, dst, p0, p1)

    def seq_remove(self, seq_id: int, p0: int = -1, p1: int = -1) -> None:
        if p0 < 0 and p1 < 0:
            self.removed.append(seq_id)
        self.ctx.seq_remove(seq_id, p0, p1)


def make_seq(n_prompt: int, first: int = 1) -> Sequence:
    tokens = list(range(first, first + n_prompt))
    req = GenerationRequest(prompt_tokens=tokens, max_tokens=100, emit=lambda out: None)
    return Sequence(req, sampler=None, detokenizer=None)  # type: ignore[arg-type]


def run_plan(sched: Scheduler) -> list[tuple[Sequence, int]]:
    """Apply a plan as the engine would, with a sampled token for finished prefills."""
    plan = sched.schedule()
    for chunk in plan.chunks:
        chunk.seq.n_computed += chunk.n_tokens
        sched.on_computed(chunk.seq)
        if chunk.seq.n_computed == len(chunk.seq.tokens):
            chunk.seq.tokens.append(7)
    return [(c.seq, c.n_tokens) for c in plan.chunks]


def test_decode_tokens_come_first_and_prompts_are_chunked(ctx: LlamaContext) -> None:
    kv = RecordingKV(ctx)
    released = kv.removed
    sched = Scheduler(max_running=4, token_budget=64, n_cells=10_000, cache=NoCache(kv))
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


def test_a_mixed_step_runs_its_decodes_apart_from_its_prompts(ctx: LlamaContext) -> None:
    """On a CPU, llama.cpp's flash attention computes 64-row tiles over every KV block any
    row reads: decode rows beside a prompt chunk cost as if every row read every decoding
    sequence's cells. A separating scheduler's step is two calls from the tile size up."""
    sched = Scheduler(max_running=4, token_budget=64, n_cells=10_000, cache=NoCache(ctx))
    decoding, long_ = make_seq(10), make_seq(200, first=300)
    sched.add(decoding)
    run_plan(sched)
    sched.add(long_)
    plan = sched.schedule()
    assert [(c.seq, c.n_tokens) for c in plan.chunks] == [(decoding, 1), (long_, 63)]
    assert plan.calls(separate_prompts=False) == [plan]
    decodes, prompts = plan.calls(separate_prompts=True)
    assert [c.seq for c in decodes.chunks] == [decoding]
    assert [c.seq for c in prompts.chunks] == [long_] and prompts.admitted == [long_]
    small = StepPlan([*plan.chunks[:1], Chunk(long_, 20)])  # under one tile: one call
    assert small.calls(separate_prompts=True) == [small]
    alone = StepPlan([Chunk(long_, 64)])  # nothing to separate
    assert alone.calls(separate_prompts=True) == [alone]
    for seq in (decoding, long_):
        sched.remove(seq)


def test_admission_respects_sequences_and_cells(ctx: LlamaContext) -> None:
    sched = Scheduler(max_running=2, token_budget=512, n_cells=100, cache=NoCache(ctx))
    a, b, c = make_seq(40), make_seq(40), make_seq(10)
    for s in (a, b, c):
        sched.add(s)
    run_plan(sched)
    assert sched.running == [a, b] and list(sched.waiting) == [c]  # only two ids


def test_big_prompt_waits_for_cells(ctx: LlamaContext) -> None:
    sched = Scheduler(max_running=4, token_budget=512, n_cells=100, cache=NoCache(ctx))
    a, b = make_seq(60), make_seq(60)
    sched.add(a)
    sched.add(b)
    run_plan(sched)
    assert sched.running == [a] and list(sched.waiting) == [b]
    sched.remove(a)
    run_plan(sched)
    assert sched.running == [b]


def test_preemption_when_cells_run_out(ctx: LlamaContext) -> None:
    kv = RecordingKV(ctx)
    released = kv.removed
    sched = Scheduler(max_running=2, token_budget=512, n_cells=50, cache=NoCache(kv))
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


def test_shared_prefix_is_prefilled_once(ctx: LlamaContext) -> None:
    """Two requests with one uncached 100-token prefix: the second waits for the first's
    prefill, then takes those cells instead of computing them again."""
    sched = Scheduler(
        max_running=4, token_budget=64, n_cells=1000, cache=PrefixCache(ctx), cache_entries=4
    )
    a = make_seq(110)
    b = make_seq(120)  # the same first 110 tokens, then 10 more
    sched.add(a)
    sched.add(b)
    computed = 0
    for _ in range(4):
        computed += sum(n for _, n in run_plan(sched))
    assert b.n_cached == 110  # all of a's prompt
    # 110 for a, b's own 10, and a few decode tokens.
    assert computed <= 110 + 10 + 3
    assert sched.cache.cells == 120
    sched.cache.check()


def test_finished_request_is_cached_and_evicted_lru(ctx: LlamaContext) -> None:
    sched = Scheduler(
        max_running=1, token_budget=512, n_cells=1000, cache=PrefixCache(ctx), cache_entries=1
    )
    a = make_seq(50, first=1)
    sched.add(a)
    run_plan(sched)
    sched.remove(a)
    assert len(sched.cache.entries) == 1
    assert sched.cache.cells == 50
    # A longer prompt starting with a's: served from the cache; once it finishes, a's entry
    # holds nothing the new one does not, so a's sequence id is given back.
    again = make_seq(60, first=1)
    sched.add(again)
    run_plan(sched)
    assert again.n_cached == 50
    sched.remove(again)
    assert len(sched.cache.entries) == 1 and sched.cache.cells == 60
    other = make_seq(30, first=500)
    sched.add(other)
    run_plan(sched)
    sched.remove(other)
    assert len(sched.cache.entries) == 2 and sched.cache.cells == 90
    # Both ids are held by entries: the next request evicts the least recently used one.
    last = make_seq(20, first=900)
    sched.add(last)
    run_plan(sched)
    assert sched.running == [last]
    assert sched.cache.stats.evictions == 1
    assert sched.cache.match(again.tokens, 60) == 0 and sched.cache.match(other.tokens, 30) == 30
    sched.cache.check()
