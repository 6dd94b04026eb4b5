"""Prompt-lookup drafting (issue 19): the index and policy (server/engine/drafting.py)
alone, then the engine verifying drafts in its one llama_decode: greedy output unchanged,
no rejected-token cells left behind, requests that cannot draft unaffected."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import pytest

from server.chat.prompt import PromptBuilder
from server.chat.structured import schema_grammar
from server.chat.template import ChatTemplate
from server.engine.drafting import (
    DraftStats,
    PredictionLookup,
    PromptLookup,
    StepCost,
    draft_length,
)
from server.engine.engine import Engine
from server.engine.request import FinishReason
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


def cost(base_ms: float, per_token_ms: float) -> StepCost:
    c = StepCost()
    for n in (1, 1, 3, 5, 9, 1, 2):
        c.observe(n, (base_ms + per_token_ms * (n - 1)) / 1000)
    return c


def test_the_step_cost_is_fitted_from_steps_of_different_sizes() -> None:
    c = StepCost()
    assert not c.measured
    c.observe(1, 0.010)
    c.observe(1, 0.010)
    # One size only: the prior splits it.
    assert c.base == pytest.approx(0.010) and c.per_token == pytest.approx(0.005)
    fitted = cost(13, 5)
    assert fitted.per_token == pytest.approx(0.005) and fitted.base == pytest.approx(0.008)
    fitted.observe(400, 1.0)  # a prompt chunk: another regime, left out
    assert fitted.per_token == pytest.approx(0.005)


def test_drafting_stops_where_it_does_not_pay() -> None:
    cpu, gpu = cost(13, 5), cost(2, 0.01)
    fresh, copying, prose = DraftStats(), DraftStats(), DraftStats()
    for _ in range(6):
        copying.record(drafted=8, accepted=8)
        prose.record(drafted=2, accepted=0)
    assert fresh.next_token_acceptance == 0.5
    assert copying.next_token_acceptance > 0.95 > 0.2 > prose.next_token_acceptance

    def k(stats: DraftStats, c: StepCost, batch: int = 1, outputs: int = 1, room: int = 512):
        return draft_length(stats, c, 8, batch, outputs, room)

    # Alone on a CPU: a token costs ~0.4 of a step; a copying sequence drafts in full, a
    # new one one token, one that writes its own prose nothing.
    assert (k(copying, cpu), k(fresh, cpu), k(prose, cpu)) == (8, 1, 0)
    # Eight decoding on a CPU: a token of the step already yields most of a token, so
    # only a sequence that has been copying drafts, and less.
    assert (k(copying, cpu, 8, 8), k(fresh, cpu, 8, 8)) == (5, 0)
    assert k(DraftStats(_hits=3, _misses=1), cpu, 8, 8) == 0
    # A GPU: tokens are nearly free, so even a new sequence drafts in a wide batch.
    assert k(fresh, gpu, 32, 32) >= 2 and k(copying, gpu, 32, 32) == 8
    # Room left in the step's budget and cells bounds it; no measurement yet: none.
    assert k(copying, cpu, room=3) == 3 and k(copying, StepCost()) == 0
    with pytest.raises(ValueError):
        PromptLookup(max_ngram=1, min_ngram=2)


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


def cells_match(engine: Engine) -> None:
    """What llama.cpp holds under each sequence id is what the prefix cache says the id
    holds: no rejected draft token's cell was left behind."""
    cache = engine.scheduler.cache
    for seq_id in range(engine.scheduler.n_sequence_ids):
        held = cache.held_length(seq_id) if seq_id in cache._deepest else 0
        assert engine.ctx.seq_pos_max(seq_id) + 1 == held, seq_id


def test_greedy_output_is_the_same_with_drafts(model: LlamaModel, prompts) -> None:
    plain, drafting = make_engine(model), make_engine(model, max_draft=8)
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
    engine = make_engine(model, max_draft=8)
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
    plain, drafting = make_engine(model), make_engine(model, max_draft=8)
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
    assert compared > 300
    assert drafting.stats.draft_accepted - before > 100  # the drafts were used


def test_a_seeded_sampled_request_is_reproducible_with_drafts(model: LlamaModel, prompts) -> None:
    """The same seeded requests on two servers in the same state (here: fresh) give the
    same text: what drafts are made and kept depends on nothing outside the request.
    (The same holds without drafting; a server whose cache has changed in between can
    differ by float noise either way.)"""
    texts = []
    for _ in range(2):
        engine = make_engine(model, max_draft=8)
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
