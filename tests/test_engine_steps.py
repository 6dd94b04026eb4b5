"""The engine driven one synchronous step() at a time, over the real model: no thread, no
HTTP. Cancellation mid-prefill and mid-decode, stop strings across tokens, preemption,
prompt logprobs, and faults that fail one request while the others go on."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from server.engine.engine import Engine, EngineConfig
from server.engine.request import FinishReason, GenerationOutput, GenerationRequest
from server.llama.model import LlamaModel
from server.llama.sampler import SamplingParams
from server.model_files import resolve_chat_model

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    m = LlamaModel(resolve_chat_model(""))
    yield m
    m.close()


def make_engine(model: LlamaModel, **overrides: int) -> Engine:
    config = {
        "n_ctx": 2048,
        "context_length": 2048,
        "max_running": 4,
        "max_waiting": 16,
        "step_token_budget": 512,
        "n_batch": 512,
        "n_ubatch": 512,
        "n_threads": 2,
        "cache_entries": 4,
        **overrides,
    }
    return Engine(model, EngineConfig(**config))


@pytest.fixture
def engine(model: LlamaModel) -> Iterator[Engine]:
    e = make_engine(model)
    yield e
    e.stop()


class Outputs(list[GenerationOutput]):
    @property
    def text(self) -> str:
        return "".join(o.text for o in self)

    @property
    def done(self) -> bool:
        return bool(self) and self[-1].finished

    @property
    def last(self) -> GenerationOutput:
        return self[-1]


def submit(engine: Engine, prompt: str | list[int], max_tokens: int = 16, **kw: object):  # type: ignore[no-untyped-def]
    outputs = Outputs()
    tokens = prompt if isinstance(prompt, list) else engine.model.tokenize(prompt, True)
    kw.setdefault("sampling", GREEDY)
    request = GenerationRequest(tokens, max_tokens, outputs.append, **kw)  # type: ignore[arg-type]
    engine.submit(request)
    return request, outputs


def run_until(engine: Engine, *outputs: Outputs, limit: int = 500) -> None:
    for _ in range(limit):
        if all(o.done for o in outputs):
            return
        engine.step()
    raise AssertionError("requests did not finish")


def idle(engine: Engine) -> None:
    """Nothing runs, and every cell in use is the prefix cache's."""
    engine.step()
    stats = engine.stats
    assert stats.running == 0 and stats.waiting == 0 and stats.active == 0
    assert stats.cells_used == stats.cache_cells
    assert stats.sequence_ids - stats.free_sequence_ids == stats.cache_entries
    engine.scheduler.cache.check()


def test_a_request_runs_step_by_step(engine: Engine) -> None:
    _request, out = submit(engine, "The capital of France is", max_tokens=8)
    engine.step()  # admitted, prompt computed, first token sampled
    assert len(out) == 1 and not out.done
    run_until(engine, out)
    assert out.last.finish_reason is FinishReason.LENGTH
    assert out.last.completion_tokens == 8 and sum(len(o.token_ids) for o in out) == 8
    idle(engine)


def test_cancel_mid_prefill(model: LlamaModel) -> None:
    engine = make_engine(model, step_token_budget=16, n_batch=16, n_ubatch=16)
    try:
        request, out = submit(engine, "word " * 100, max_tokens=4)
        engine.step()
        seq = engine._sequences[request.id]
        assert 0 < seq.n_computed < seq.n_prompt  # part of the prompt is in
        engine.cancel(request)
        engine.step()
        assert out.done and out.last.finish_reason is FinishReason.CANCELLED
        idle(engine)
        # The computed part of the prompt stayed in the cache for the next one.
        _, again = submit(engine, "word " * 100, max_tokens=2)
        run_until(engine, again)
        assert again.last.cached_tokens >= 16
    finally:
        engine.stop()


def test_cancel_mid_decode(engine: Engine) -> None:
    request, out = submit(engine, "Count: one, two,", max_tokens=200, ignore_eos=True)
    _other, other_out = submit(engine, "Hello", max_tokens=5)
    for _ in range(5):
        engine.step()
    engine.cancel(request)
    run_until(engine, out, other_out)
    assert out.last.finish_reason is FinishReason.CANCELLED
    assert 3 <= out.last.completion_tokens < 200
    assert other_out.last.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    idle(engine)


def test_stop_strings_across_tokens_never_leak(engine: Engine) -> None:
    prompt = "List the numbers: 1, 2, 3, 4, 5,"
    _, plain = submit(engine, prompt, max_tokens=24, ignore_eos=True)
    run_until(engine, plain)
    pieces = [o.text for o in plain if o.text]
    # A stop string made of the end of one piece and the start of the next.
    i = next(i for i in range(2, len(pieces) - 1) if pieces[i].strip() and pieces[i + 1].strip())
    stop = pieces[i][-1:] + pieces[i + 1][:2]
    expected = plain.text[: plain.text.index(stop)]
    _, stopped = submit(engine, prompt, max_tokens=24, ignore_eos=True, stop=[stop])
    run_until(engine, stopped)
    assert stopped.last.finish_reason is FinishReason.STOP
    assert stopped.text == expected  # nothing of the stop string was ever emitted
    idle(engine)


def test_preemption_recomputes_and_finishes(model: LlamaModel) -> None:
    engine = make_engine(model, n_ctx=256, context_length=256, cache_entries=0)
    try:
        outs = [
            submit(engine, f"Story {i}: once upon a time", max_tokens=90, ignore_eos=True)[1]
            for i in range(3)
        ]
        run_until(engine, *outs, limit=2000)
        assert engine.scheduler.preemptions > 0
        for out in outs:
            assert out.last.finish_reason is FinishReason.LENGTH
            assert out.last.completion_tokens == 90
            assert sum(len(o.token_ids) for o in out) == 90
        idle(engine)
    finally:
        engine.stop()


def test_prompt_logprobs(engine: Engine) -> None:
    tokens = engine.model.tokenize("Paris is the capital of France.", True)
    _, out = submit(engine, tokens, max_tokens=1, prompt_logprobs=2)
    run_until(engine, out)
    scores = next(o.prompt_logprobs for o in out if o.prompt_logprobs is not None)
    assert [s.token for s in scores] == tokens[1:]
    assert all(math.isfinite(s.logprob) and s.logprob <= 0 for s in scores)
    assert all(len(s.top) == 2 for s in scores)
    idle(engine)


def test_a_decode_failure_fails_its_request_and_the_engine_goes_on(engine: Engine) -> None:
    decode = engine.ctx.decode
    engine.ctx.decode = lambda batch: -1  # type: ignore[method-assign]
    _, failed = submit(engine, "Hello there", max_tokens=4)
    engine.step()
    assert failed.done and failed.last.finish_reason is FinishReason.ERROR
    assert "llama_decode failed (-1)" in (failed.last.error or "")
    engine.ctx.decode = decode  # type: ignore[method-assign]
    _, ok = submit(engine, "Hello there", max_tokens=4)
    run_until(engine, ok)
    assert ok.last.finish_reason is FinishReason.LENGTH
    idle(engine)


def test_a_step_runs_its_decodes_and_prompts_as_two_calls_when_told(model: LlamaModel) -> None:
    """separate_prompts (on by default on a CPU): the decodes first, then the prompt
    chunks, each a llama_decode of its own; a failure of the second call fails only the
    prompts in it, and the decodes of the first keep their tokens."""
    engine = make_engine(model, separate_prompts=True)
    sizes: list[int] = []
    decode = engine.ctx.decode
    fail_prompts = False

    def recording(batch):  # type: ignore[no-untyped-def]
        sizes.append(batch.n_tokens)
        return -1 if fail_prompts and batch.n_tokens > 1 else decode(batch)

    engine.ctx.decode = recording  # type: ignore[method-assign]
    try:
        _, talking = submit(engine, "The capital of France is", max_tokens=40, ignore_eos=True)
        engine.step()
        long_prompt = "Tell me everything about lighthouses and their keepers. " * 12
        _, joining = submit(engine, long_prompt, max_tokens=4)
        sizes.clear()
        engine.step()
        assert sizes[0] == 1 and sizes[1] > 64 and len(sizes) == 2
        assert len(talking) == 2 and len(joining) == 1  # each call's token came out
        run_until(engine, joining)
        fail_prompts = True
        other = "Describe the tides, the moon and the sea in a long essay. " * 12
        _, failing = submit(engine, other, max_tokens=4)
        engine.step()
        assert failing.done and failing.last.finish_reason is FinishReason.ERROR
        assert not talking.done and len(talking) >= 3
        fail_prompts = False
        run_until(engine, talking)
        assert talking.last.finish_reason is FinishReason.LENGTH
        assert talking.last.completion_tokens == 40
    finally:
        engine.ctx.decode = decode  # type: ignore[method-assign]
        engine.stop()


class FailingSampler:
    def sample(self, ctx: object, index: int) -> int:
        raise RuntimeError("injected fault")

    def close(self) -> None:
        pass


def test_a_fault_while_sampling_fails_only_its_request(engine: Engine) -> None:
    bad, bad_out = submit(engine, "One two three", max_tokens=30, ignore_eos=True)
    _good, good_out = submit(engine, "Four five six", max_tokens=30, ignore_eos=True)
    engine.step()
    real = engine._sequences[bad.id].sampler
    engine._sequences[bad.id].sampler = FailingSampler()  # type: ignore[assignment]
    real.close()
    run_until(engine, bad_out, good_out)
    assert bad_out.last.finish_reason is FinishReason.ERROR
    assert "sampling" in (bad_out.last.error or "")
    assert good_out.last.finish_reason is FinishReason.LENGTH
    assert sum(len(o.token_ids) for o in good_out) == 30
    idle(engine)


def test_a_request_that_cannot_start_fails_alone(engine: Engine) -> None:
    """What killed the engine thread: a DRY breaker llama.cpp cannot take (the API refuses
    it earlier still)."""
    broken = SamplingParams(dry_multiplier=0.8, dry_sequence_breakers=("\ud800",))
    _, bad = submit(engine, "Hello", max_tokens=4, sampling=broken)
    _, good = submit(engine, "Hello", max_tokens=4)
    run_until(engine, bad, good)
    assert bad.last.finish_reason is FinishReason.ERROR
    assert good.last.finish_reason is FinishReason.LENGTH
    idle(engine)


def test_a_grammar_that_completes_ends_the_output(engine: Engine) -> None:
    # Every end-of-generation token banned: once "yes" is written nothing is allowed.
    ban = {t: -100.0 for t in engine.model.eog_tokens}
    params = SamplingParams(temperature=0.0, grammar='root ::= "yes"', logit_bias=ban)
    _, out = submit(engine, "Answer:", max_tokens=10, sampling=params)
    run_until(engine, out)
    assert out.text == "yes" and out.last.finish_reason is FinishReason.STOP
    idle(engine)


def test_a_tiny_cache_evicts_and_keeps_serving(model: LlamaModel) -> None:
    """512 cells, 2 cache entries of at most 150 cells: requests that do not all fit
    evict the cache (and preempt) but every one completes, and no cell is left behind."""
    engine = make_engine(model, n_ctx=512, context_length=512, cache_entries=2, cache_cells=150)
    try:

        def prompt(tag: str) -> list[int]:
            text = f"You are assistant {tag}. Notes: " + " ".join(f"{tag}-{i}" for i in range(35))
            return engine.model.tokenize(text, True)

        for i in range(6):
            _, out = submit(engine, prompt(f"eta{i}"), max_tokens=8)
            run_until(engine, out)
        # Six ~85-token prompts plus 20 outputs each do not fit in 512 cells at once.
        outs = [submit(engine, prompt(f"theta{i}"), 20, ignore_eos=True)[1] for i in range(6)]
        run_until(engine, *outs, limit=3000)
        assert all(out.last.completion_tokens == 20 for out in outs)
        assert engine.stats.cache.evictions > 0
        idle(engine)
        assert engine.stats.cache_cells <= 150
        assert engine.stats.cache_entries <= 2 + 4  # its own ids plus idle running ids at most
    finally:
        engine.stop()
