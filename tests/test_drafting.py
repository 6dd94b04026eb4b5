"""Prompt-lookup drafting (issue 19): the index and policy (server/engine/drafting.py)
alone, then the engine verifying drafts in its one llama_decode: greedy output unchanged,
no rejected-token cells left behind, requests that cannot draft unaffected."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator

import pytest

from server.chat.prompt import PromptBuilder
from server.chat.structured import schema_grammar
from server.chat.template import ChatTemplate
from server.engine.drafting import (
    TRUSTED_AFTER,
    DraftStats,
    PredictionLookup,
    PromptLookup,
    StepCost,
    plan_drafts,
)
from server.engine.engine import Engine
from server.engine.request import FinishReason
from server.engine.scheduler import StepPlan
from server.llama.model import LlamaModel
from server.llama.sampler import SamplingParams
from server.model_files import resolve_chat_model
from tests.test_engine_steps import Outputs, idle, make_engine, run_until, submit


def test_a_quoted_span_is_proposed_from_the_prompt() -> None:
    prompt = [10, 11, 12, 13, 14, 15, 16, 99, 98]
    d = PromptLookup(tokens=prompt)
    d.extend([11, 12])  # the answer starts quoting the prompt
    assert d.propose(4) == [13, 14, 15, 16]
    assert d.propose(2) == [13, 14]
    d.extend([13, 14, 15, 16, 99, 98])
    assert d.propose(3) == [11, 12, 13]  # the next quote of what followed
    assert d.propose(0) == []


def test_the_longest_and_most_recent_match_wins() -> None:
    d = PromptLookup(max_ngram=3, min_ngram=1, tokens=[1, 2, 7, 5, 2, 8, 9, 1, 2, 3, 4])
    d.extend([0, 1, 2])
    # "1 2" occurred at 0 (then 7) and at 7 (then 3): the most recent one.
    assert d.propose(2) == [3, 4]
    d.extend([3])
    # "1 2 3" (length 3) beats "3" alone.
    assert d.propose(1) == [4]


def test_no_match_proposes_nothing_and_the_suffix_never_matches_itself() -> None:
    d = PromptLookup(tokens=[1, 2, 3])
    assert d.propose(4) == []
    d.extend([4, 5])
    assert d.propose(4) == []


@pytest.mark.parametrize("seed", range(5))
def test_incremental_index_equals_a_scan(seed: int) -> None:
    rng = random.Random(seed)
    tokens = [rng.randrange(6) for _ in range(300)]
    d = PromptLookup(max_ngram=3, min_ngram=2)
    for i, t in enumerate(tokens):
        d.extend([t])
        seen = tokens[: i + 1]
        expected: list[int] = []
        for n in range(min(3, len(seen)), 1, -1):
            suffix = seen[-n:]
            starts = [j for j in range(len(seen) - n) if seen[j : j + n] == suffix]
            if starts:
                start = starts[-1] + n
                expected = seen[start : start + 5]
                break
        assert d.propose(5) == expected, i


def test_a_prediction_is_proposed_from_its_start_and_after_an_edit() -> None:
    prompt = [70, 71, 72]
    d = PredictionLookup(list(range(1, 11)), n_prompt=len(prompt))
    d.extend([*prompt, 1])
    assert d.propose(3) == [2, 3, 4]
    d.extend([2, 3, 99, 98, 6])  # an edit: 99 98 where 4 5 were predicted
    assert d.propose(3) == []  # lost: the last tokens occur nowhere in the prediction
    d.extend([7])  # "6 7" is there: drafting resumes after it
    assert d.propose(3) == [8, 9, 10]
    assert d.matched == 3
    d.extend([8, 9, 10])
    assert d.matched == 6 and d.propose(2) == []  # the prediction is used up
    # A repeated line is resumed where the output is, not at its first occurrence.
    lines = [5, 6, 1, 5, 6, 2, 5, 6, 3]
    d = PredictionLookup(lines, n_prompt=0)
    d.extend([5, 6, 1, 5, 6, 2, 0, 5, 6])  # an inserted 0 before the third line
    assert d.propose(1) == [3]


def table(ms: dict[int, float]) -> StepCost:
    c = StepCost()
    for n, t in ms.items():
        c.observe(n, t / 1000)
    return c


# Measured here (two CPU cores, the default model): one token 7 ms, two 17, eight 29.
CPU = {1: 7, 2: 17, 3: 21, 4: 24, 6: 31, 8: 29, 9: 33, 16: 37, 24: 51}
GPU = {1: 5.0, 2: 5.0, 8: 5.1, 9: 5.1, 16: 5.2, 32: 5.4, 40: 5.5}


class FixedCost(StepCost):
    """Step costs as measured once, no longer learning from the clock."""

    def observe(self, n_tokens: int, seconds: float) -> None:
        pass


def fixed_cost(ms: dict[int, float]) -> FixedCost:
    fixed = FixedCost()
    for _ in range(TRUSTED_AFTER):  # each size measured often enough to be believed
        for n, t in ms.items():
            StepCost.observe(fixed, n, t / 1000)
    return fixed


def test_the_step_cost_is_a_table_of_sizes_not_a_line() -> None:
    c = StepCost()
    assert not c.measured and c.seconds(4) == 0.0
    c = table(CPU)
    assert c.measured
    assert c.seconds(8) == pytest.approx(0.029)
    # Six measured once at more than eight: perhaps a slow step; tried again as if eight.
    assert c.seconds(6) == pytest.approx(0.029)
    for _ in range(TRUSTED_AFTER - 1):
        c.observe(6, 0.031)
    assert c.seconds(8) < c.seconds(6) == pytest.approx(0.031)  # eight tile better than six
    assert c.seconds(5) == pytest.approx((0.024 + 0.031) / 2)  # between seen sizes
    assert c.seconds(96) == pytest.approx(0.051 * 2)  # past them: sqrt of the ratio
    c.observe(288, 0.1)  # 32 sequences drafting 8 tokens each
    c.observe(100_000, 1.0)  # beyond any step: the table stays bounded
    assert c.by_size_ms()[288] == 100.0 and 100_000 not in c.by_size_ms()
    assert c.by_size_ms()[2] == 17.0
    for _ in range(40):  # the machine got slower: a size's mean follows
        c.observe(2, 0.030)
    assert c.seconds(2) == pytest.approx(0.030, rel=0.02)


def test_the_step_cost_follows_the_machines_speed_for_every_size() -> None:
    """Steps of one size, measured every step, tell how fast the machine runs now; sizes a
    plan picks rarely are priced by it too, not by what they cost minutes ago."""
    c = table(CPU)
    for _ in range(20):  # one-token steps, as a lone sequence not drafting runs
        c.observe(1, 0.007)
    assert c.level == pytest.approx(1.0)
    for _ in range(60):  # the machine got twice as slow; only one-token steps ran
        c.observe(1, 0.014)
    assert c.seconds(1) == pytest.approx(0.014, rel=0.02)
    assert c.level > 1.4
    for n, ms in CPU.items():  # every size dearer by the same factor
        assert c.by_size_ms()[n] == pytest.approx(ms * c.level, rel=0.01) or n == 1
        assert c.seconds(n) > ms / 1000 * 1.4 or n == 1
    # The shape stays: eight still cheaper than nine, two still much dearer than one.
    assert c.seconds(8) < c.seconds(9) and c.seconds(2) > 1.5 * c.seconds(1)
    for _ in range(60):  # and back
        c.observe(1, 0.007)
    assert c.seconds(8) == pytest.approx(0.029, rel=0.05)


def test_acceptance_is_estimated_per_position_since_it_comes_in_runs() -> None:
    fresh, copying, prose = DraftStats(), DraftStats(), DraftStats()
    for _ in range(6):
        copying.record(drafted=8, accepted=8)
        prose.record(drafted=8, accepted=0)
    copying.record(drafted=8, accepted=1)  # one draft missed early
    assert fresh.reach(3) == [0.5, 0.25, 0.125]
    # Whole drafts and one early miss, the latest: as likely to reach the eighth token as
    # the second, where one rate per token (about 0.85 here) would put it at 0.27.
    r = copying.reach(8)
    assert r[0] > 0.9 and r[7] > 0.65 and r[7] == pytest.approx(r[1], rel=0.05)
    assert max(prose.reach(8)) < 0.1
    # Never rising with the position, even where fewer long drafts were seen.
    mixed = DraftStats()
    mixed.record(2, 0)
    mixed.record(8, 8)
    r = mixed.reach(8)
    assert all(a >= b for a, b in itertools.pairwise(r))


def test_a_watched_proposal_teaches_the_estimate_for_free() -> None:
    stats = DraftStats()
    tokens = [1, 2, 3]
    stats.watch([4, 5, 6], at=3)
    stats.settle([*tokens, 4, 5])  # not yet decided: the output still follows it
    assert stats.reach(1) == [0.5]
    stats.settle([*tokens, 4, 5, 6, 7])  # followed whole
    assert stats.reach(3)[2] > 0.7
    stats.watch([8, 9], at=7)
    stats.watch([1, 1], at=7)  # one at a time: the first stays
    stats.settle([*tokens, 4, 5, 6, 7, 8, 0])  # departed at the second
    after = stats.reach(2)
    assert after[0] > 0.8 and after[1] < 0.7
    stats.watch([3], at=9)
    stats.unwatch()  # drafted for real instead: the verification is the evidence
    stats.settle([*tokens, 4, 5, 6, 7, 8, 0, 3, 3])
    assert stats.reach(2) == after


def test_a_sequence_copies_while_its_last_draft_was_accepted_whole() -> None:
    """Only a copying sequence may draft past max_draft when alone: on thin evidence the
    planner bought long drafts for code edits and sampled answers (0.97x)."""
    stats = DraftStats()
    assert not stats.copying
    stats.record(drafted=7, accepted=7)
    assert stats.copying
    stats.record(drafted=11, accepted=10)
    assert not stats.copying
    stats.watch([4, 5], at=3)
    stats.settle([1, 2, 3, 4, 5])  # a watched proposal the output followed whole
    assert stats.copying
    assert DraftStats.expecting(16, 2).copying  # a prediction is meant to be followed


def test_a_new_sequence_starts_from_what_recent_sequences_did() -> None:
    population = DraftStats(recency=0.95)
    quoting = population.for_new_sequence(8)
    assert quoting.reach(2) == [0.5, 0.25]
    for _ in range(5):
        quoting.record(8, 8)
    newcomer = population.for_new_sequence(8)
    assert newcomer.reach(8)[7] > 0.8  # a workload of quotes: drafts from the start
    assert newcomer.reach(8) == pytest.approx(population.reach(8))
    for _ in range(30):
        population.for_new_sequence(8).record(8, 0)
    assert population.for_new_sequence(8).reach(8)[0] < 0.3  # then prose: it waits


def test_drafting_stops_where_it_does_not_pay() -> None:
    cpu, gpu = table(CPU), table(GPU)
    fresh, copying, prose, unsure = DraftStats(), DraftStats(), DraftStats(), DraftStats()
    for _ in range(6):
        copying.record(drafted=8, accepted=8)
        prose.record(drafted=8, accepted=0)
        unsure.record(drafted=8, accepted=_ % 2 * 8)

    def plan(*seqs: DraftStats, c: StepCost = cpu, batch: int = 1, room: int = 512):
        return plan_drafts([s.reach(8) for s in seqs], c, batch, batch, room)

    # Alone on a CPU two tokens cost 2.4 one: only a copying sequence drafts, in full
    # (never one token: that step would cost more than it could yield).
    assert plan(copying)[0] >= 7 and plan(fresh) == plan(prose) == [0]
    assert plan(unsure)[0] not in range(1, 7)  # half its drafts whole: all or nothing
    # Eight decoding on a CPU: eight more tokens cost a quarter more, so a copying
    # sequence still drafts, the others not.
    wide = plan(copying, fresh, prose, *[prose] * 5, batch=8)
    assert wide[0] >= 7 and wide[1:] == [0] * 7
    # A GPU: tokens are nearly free, so even a new sequence drafts.
    assert plan(fresh, c=gpu)[0] >= 2 and plan(copying, fresh, c=gpu, batch=2)[0] == 8
    # Room left in the step's budget and cells bounds it; no measurement yet: none.
    assert plan(copying, room=3)[0] <= 3 and plan(copying, c=StepCost()) == [0]
    assert plan_drafts([], cpu, 1, 1, 8) == []
    with pytest.raises(ValueError):
        PromptLookup(max_ngram=1, min_ngram=2)


def test_drafts_beside_a_prompt_chunk_pay_for_themselves_as_decodes_would() -> None:
    """A step that also computes a prompt is mostly prompt work, which is owed anyway:
    judged by its whole time, any draft looked cheap beside it (250 draft tokens a run at
    63% acceptance under sustained load, 9% slower). A draft token there costs what a
    token costs in such a step and must yield output cheaper than a step of the decodes
    alone."""
    cpu = table(CPU)
    fresh, copying = DraftStats(), DraftStats()
    for _ in range(6):
        copying.record(drafted=8, accepted=8)
    seqs = [fresh, copying, *[DraftStats()] * 6]

    def plan(n_prompt: int) -> list[int]:
        return plan_drafts([s.reach(8) for s in seqs], cpu, 8 + n_prompt, 8, 512, n_prompt)

    assert plan(150) == [0] * 8  # what a token costs in a prompt step is not known yet
    cpu.observe_prompt_step(158, 0.395)  # 2.5 ms a token
    beside = plan(150)
    # Eight decodes alone: 29 ms, 3.6 ms an output token. A fresh sequence's first draft
    # token (a half chance, 5 ms an expected token) does not pay; a copying one's do.
    assert beside[0] == 0 and beside[1] >= 7 and beside[2:] == [0] * 6
    assert plan(0)[0] == 0  # a step of decodes alone prices drafts from the table


# --- the engine, drafting (one synchronous step() at a time, the real model) -------------

PASSAGE = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He lit the great "
    "lamp, wound the clockwork that turned the lens, and wrote the weather in a leather "
    "logbook. Ships passing the rocky point saw the beam sweep across the water every ten "
    "seconds."
)


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    m = LlamaModel(resolve_chat_model(""))
    yield m
    m.close()


@pytest.fixture(scope="module")
def prompts(model: LlamaModel) -> list[list[int]]:
    template = ChatTemplate(
        model.metadata("tokenizer.chat_template") or "",
        bos_token=model.token_text(model.bos_token),
        eos_token=model.token_text(model.eos_token),
    )
    builder = PromptBuilder(model, template)
    asks = [
        f"Repeat this text exactly:\n\n{PASSAGE}",
        f"{PASSAGE}\n\nQuote the first two sentences of the text above.",
        "Write a short poem about autumn.",
    ]
    return [builder.chat([{"role": "user", "content": a}]) for a in asks]


def generate(engine: Engine, prompts: list[list[int]], **kw: object) -> list[Outputs]:
    """Each prompt alone, one after the other (batch shapes then match with or without
    drafting but for the draft tokens themselves)."""
    outs = []
    for p in prompts:
        _, out = submit(engine, p, **kw)
        run_until(engine, out)
        outs.append(out)
    idle(engine)
    cells_match(engine)
    return outs


def drafting_engine(model: LlamaModel, costs: dict[int, float] = CPU, **kw: object) -> Engine:
    """An engine that drafts, its step costs fixed (by default at what two CPU cores here
    measured): how long drafts are then depends on the requests alone, not on how busy
    the machine is while the test runs (under load, measured costs told these tests'
    drafts not to pay, and the drafting they check did not happen)."""
    engine = make_engine(model, **{"max_draft": 8, **kw})
    engine.scheduler.step_cost = fixed_cost(costs)
    return engine


def cells_match(engine: Engine) -> None:
    """What llama.cpp holds under each sequence id is what the prefix cache says the id
    holds: no rejected draft token's cell was left behind."""
    cache = engine.scheduler.cache
    for seq_id in range(engine.scheduler.n_sequence_ids):
        held = cache.held_length(seq_id) if seq_id in cache._deepest else 0
        assert engine.ctx.seq_pos_max(seq_id) + 1 == held, seq_id


def test_greedy_output_is_the_same_with_drafts(model: LlamaModel, prompts) -> None:
    plain, drafting = make_engine(model), drafting_engine(model)
    try:
        for kw in ({"max_tokens": 96}, {"max_tokens": 40, "stop": [" every"]}):
            a = generate(plain, prompts, **kw)
            b = generate(drafting, prompts, **kw)
            assert [o.text for o in a] == [o.text for o in b]
            assert [o.last.finish_reason for o in a] == [o.last.finish_reason for o in b]
            assert [o.last.completion_tokens for o in a] == [o.last.completion_tokens for o in b]
        stats = drafting.stats
        assert stats.draft_accepted > 50 and stats.draft_tokens >= stats.draft_accepted
        assert stats.steps < plain.stats.steps  # more than one token a step
        assert plain.stats.draft_tokens == 0
    finally:
        plain.stop()
        drafting.stop()


def test_only_decode_steps_teach_the_step_cost(model: LlamaModel, prompts) -> None:
    """Prompt chunks cost less per token than a decode step's extra tokens do, so a fit
    over both made drafts look cheap (on 2 cores: 2.4 ms a token fitted, 4.5 measured) and
    drafting at concurrency 1 cost more than it saved."""
    engine = make_engine(model, max_draft=8)
    try:
        _, out = submit(engine, prompts[2], max_tokens=6)
        engine.step()  # the prompt, whole, and the first token
        assert engine.stats.prompt_tokens_processed == len(prompts[2])
        assert not engine.scheduler.step_cost.measured
        run_until(engine, out)
        assert engine.scheduler.step_cost.measured  # from the decode steps after it
    finally:
        engine.stop()


def test_cancelled_requests_leave_no_draft_cells(model: LlamaModel, prompts) -> None:
    # A GPU's costs: drafts are nearly free, so even a new sequence drafts from its first
    # steps, which the cancellations cut short.
    engine = drafting_engine(model, GPU)
    try:
        for i in range(50):
            request, out = submit(engine, prompts[i % 2], max_tokens=64)
            for _ in range(3 + i % 4):
                engine.step()
            engine.cancel(request)
            engine.step()
            assert out.done and out.last.finish_reason is FinishReason.CANCELLED
        idle(engine)
        cells_match(engine)
        assert engine.stats.draft_accepted > 0
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def engines(model: LlamaModel) -> Iterator[tuple[Engine, Engine]]:
    plain, drafting = make_engine(model), drafting_engine(model)
    yield plain, drafting
    plain.stop()
    drafting.stop()


def same_choices_on_same_logits(a: Outputs, b: Outputs) -> int:
    """Two runs of one seeded request choose the same tokens wherever the model's
    log-probabilities so far were bit-identical. (Past the first difference, a different
    batch shape's float noise may change a sampled token, which is no fault of drafting:
    a request batched beside another one differs as often.) Returns how many tokens were
    compared."""
    rows_a = [lp for o in a for lp in o.logprobs or []]
    rows_b = [lp for o in b for lp in o.logprobs or []]
    compared = 0
    for x, y in zip(rows_a, rows_b, strict=False):
        if x.top != y.top:
            break  # the logits differ from here on: noise, not a choice
        assert x.token == y.token, compared
        compared += 1
    return compared


def test_sampled_choices_are_the_same_with_drafts(engines, prompts) -> None:
    """Each draft token is kept only where the request's own sampler (penalties, top-k,
    top-p, its seeded random stream) chooses it, one choice per position in order: on the
    same logits the output is the one the request gets without drafting."""
    plain, drafting = engines
    before = drafting.stats.draft_accepted
    compared = 0
    for seed in range(1, 7):
        sampling = SamplingParams(
            temperature=0.7, top_k=40, top_p=0.95, repeat_penalty=1.05, seed=seed
        )
        a = generate(plain, prompts[:2], max_tokens=80, sampling=sampling, logprobs=3)
        b = generate(drafting, prompts[:2], max_tokens=80, sampling=sampling, logprobs=3)
        compared += sum(same_choices_on_same_logits(x, y) for x, y in zip(a, b, strict=True))
    # Enough tokens compared to mean something: how soon two batch shapes' logits part
    # depends on the CPU's kernels (296 on an AVX2-only EPYC here, more with AVX-512).
    assert compared > 200
    assert drafting.stats.draft_accepted - before > 100  # the drafts were used


def test_a_seeded_sampled_request_is_reproducible_with_drafts(model: LlamaModel, prompts) -> None:
    """The same seeded requests on two servers in the same state (here: fresh, and the
    same step costs: what the clock says a step costs decides how long drafts are, and
    a different batch shape can change a near-tie by float noise) give the same text:
    what drafts are made and kept depends on nothing else outside the request. (The
    same holds without drafting; a server whose cache has changed in between can differ
    by float noise either way.)"""
    texts = []
    for _ in range(2):
        engine = drafting_engine(model)
        try:
            outs = [
                generate(
                    engine,
                    prompts[:2],
                    max_tokens=64,
                    sampling=SamplingParams(temperature=0.9, seed=s),
                )
                for s in range(3)
            ]
            texts.append([o.text for batch in outs for o in batch])
            assert engine.stats.draft_accepted > 0
        finally:
            engine.stop()
    assert texts[0] == texts[1]


def test_grammar_output_with_drafts(engines, prompts) -> None:
    """Drafted tokens go through the grammar like sampled ones: a token it forbids is never
    kept, and the output ends where the grammar completes."""
    plain, drafting = engines
    schema = {
        "type": "object",
        "properties": {"quote": {"type": "string", "maxLength": 120}},
        "required": ["quote"],
    }
    grammar = schema_grammar(schema, "response_format")
    before = drafting.stats.draft_accepted
    greedy = SamplingParams(temperature=0.0, grammar=grammar)
    a = generate(plain, prompts[:2], max_tokens=120, sampling=greedy)
    b = generate(drafting, prompts[:2], max_tokens=120, sampling=greedy)
    assert [o.text for o in a] == [o.text for o in b]
    for seed in range(3):
        sampled = SamplingParams(temperature=0.8, seed=seed, grammar=grammar)
        a = generate(plain, prompts[:2], max_tokens=120, sampling=sampled, logprobs=1)
        b = generate(drafting, prompts[:2], max_tokens=120, sampling=sampled, logprobs=1)
        for x, y in zip(a, b, strict=True):
            same_choices_on_same_logits(x, y)
            assert y.last.finish_reason is FinishReason.STOP  # the grammar completed
            assert isinstance(json.loads(y.text)["quote"], str)
    assert drafting.stats.draft_accepted > before


def common_prefix(a: list[int], b: list[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def greedy_on_its_own_logits(out: Outputs) -> list[int]:
    """The output's tokens, each checked to be the best token of the logits the engine
    computed for its position (a draft token kept where the model would not have chosen
    it fails this whatever the batch shape's float noise)."""
    rows = [lp for o in out for lp in o.logprobs or []]
    tokens = [t for o in out for t in o.token_ids]
    assert len(rows) == len(tokens) > 0
    for i, (token, row) in enumerate(zip(tokens, rows, strict=True)):
        assert row.token == token and row.top[0][0] == token, i
    return tokens


def test_a_prediction_is_followed_and_changes_nothing(engines, model, prompts) -> None:
    """OpenAI's Predicted Outputs: the expected output is drafted from; every token is
    still the model's own choice, and usage counts what followed the prediction."""
    plain, drafting = engines
    (reference,) = generate(plain, prompts[2:], max_tokens=96, logprobs=1)
    expected = greedy_on_its_own_logits(reference)
    steps = drafting.stats.steps
    (followed,) = generate(drafting, prompts[2:], max_tokens=96, logprobs=1, prediction=expected)
    tokens = greedy_on_its_own_logits(followed)
    last = followed.last
    assert last.accepted_prediction_tokens + last.rejected_prediction_tokens == len(expected)
    common = common_prefix(tokens, expected)
    assert last.accepted_prediction_tokens >= common >= 32  # followed until noise, if any
    assert drafting.stats.steps - steps < len(tokens) / 2  # several tokens a step

    # An edit in the middle: drafting resumes after it, the output is the model's own.
    edited = (
        expected[:40] + model.tokenize(" and then, quite suddenly, a dragon", False) + expected[40:]
    )
    (out,) = generate(drafting, prompts[2:], max_tokens=96, logprobs=1, prediction=edited)
    tokens = greedy_on_its_own_logits(out)
    assert out.last.accepted_prediction_tokens >= common_prefix(tokens, edited) > 0
    assert out.last.rejected_prediction_tokens > 0
    assert out.last.accepted_prediction_tokens + out.last.rejected_prediction_tokens == len(edited)

    # A prediction the output never follows: nothing accepted, all of it rejected.
    unrelated = model.tokenize("SELECT id FROM orders WHERE total > 100;", False)
    (out,) = generate(drafting, prompts[2:], max_tokens=32, prediction=unrelated)
    assert out.last.accepted_prediction_tokens == 0
    assert out.last.rejected_prediction_tokens == len(unrelated)
    # Without drafting the prediction is not looked at, and reported as not followed.
    (out,) = generate(plain, prompts[2:], max_tokens=16, prediction=expected)
    assert (out.last.accepted_prediction_tokens, out.last.rejected_prediction_tokens) == (
        0,
        len(expected),
    )


def test_a_prediction_drafts_even_for_a_request_that_opts_out_of_prompt_lookup(
    engines, prompts
) -> None:
    plain, drafting = engines
    (reference,) = generate(plain, prompts[:1], max_tokens=48)
    expected = [t for o in reference for t in o.token_ids]
    before = drafting.stats.draft_accepted
    (out,) = generate(
        drafting, prompts[:1], max_tokens=48, prediction=expected[:20], speculative=False
    )
    assert drafting.stats.draft_accepted - before >= 10  # from the prediction alone
    assert out.last.accepted_prediction_tokens >= 10


def test_logprobs_and_opting_out_with_drafts(engines, prompts) -> None:
    plain, drafting = engines
    a = generate(plain, prompts[:1], max_tokens=48, logprobs=2)[0]
    b = generate(drafting, prompts[:1], max_tokens=48, logprobs=2)[0]
    assert a.text == b.text
    pa = [lp for o in a for lp in o.logprobs or []]
    pb = [lp for o in b for lp in o.logprobs or []]
    assert len(pb) == len(pa) == a.last.completion_tokens
    for x, y in zip(pa, pb, strict=True):
        assert x.token == y.token and len(y.top) == 2
        assert abs(x.logprob - y.logprob) < 0.05  # batch-shape noise only
    # A request that opts out is never drafted for.
    before = drafting.stats.draft_steps
    out = generate(drafting, prompts[:1], max_tokens=48, speculative=False)[0]
    assert out.text == a.text
    assert drafting.stats.draft_steps == before


def test_a_sequence_decoding_alone_may_draft_longer(model: LlamaModel, prompts) -> None:
    """max_draft bounds each sequence's draft while others decode beside it (a long draft
    would widen every step for one sequence's sake); a sequence decoding alone whose last
    draft was accepted whole may draft up to max_draft_alone. A prediction the output
    follows starts as copying and stays so."""
    plain = make_engine(model)
    engine = drafting_engine(model, max_draft=4, max_draft_alone=12)
    drafts: list[tuple[int, int]] = []  # per step: (sequences decoding, longest draft)
    schedule = engine.scheduler.schedule

    def recording_schedule() -> StepPlan:
        plan = schedule()
        decoding = [c for c in plan.chunks if not c.seq.is_prefilling]
        drafts.append((len(decoding), max((len(c.draft) for c in decoding), default=0)))
        return plan

    engine.scheduler.schedule = recording_schedule  # type: ignore[method-assign]
    try:
        expected = [
            [t for o in out for t in o.token_ids]
            for out in generate(plain, prompts[:2], max_tokens=64)
        ]
        (out,) = generate(engine, prompts[:1], max_tokens=64, prediction=expected[0])
        assert [t for o in out for t in o.token_ids] == expected[0]
        assert 4 < max(d for n, d in drafts if n == 1) <= 12

        drafts.clear()
        outs = [
            submit(engine, p, max_tokens=64, prediction=e)[1]
            for p, e in zip(prompts[:2], expected, strict=True)
        ]
        run_until(engine, *outs)
        assert max(d for n, d in drafts if n == 2) == 4
    finally:
        plain.stop()
        engine.stop()
