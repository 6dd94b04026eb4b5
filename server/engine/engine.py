"""The engine: continuous batching over one llama.cpp context.

`step()` is one engine step, synchronous: take new requests and cancellations from the
inbox, let the scheduler plan, run the plan as ONE llama_decode (runner.py: a decode token
for each generating sequence plus chunks of pending prompts; on a CPU, decodes and prompt
chunks as two calls, since llama.cpp's CPU attention makes the mix cost more than the
two: StepPlan.calls), then apply the outcome:
accept sampled tokens, finish sequences, hand outputs to their requests. Requests join and
leave between steps. The engine thread only loops over step() (blocking on the inbox when
idle); a test drives step() itself, with no thread.

Other threads talk to it through `submit`, `cancel` and `abort_all`, which are
thread-safe; results go back through each request's `emit` callback. Whatever fails in one
request fails that request alone; see `_close`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from server.engine import cache_store
from server.engine.detokenizer import IncrementalDetokenizer
from server.engine.drafting import (
    POPULATION_RECENCY,
    DraftStats,
    PredictionLookup,
    PromptLookup,
)
from server.engine.host_kv import HostStore
from server.engine.logprobs import TokenLogprob
from server.engine.no_cache import NoCache
from server.engine.prefix_cache import PrefixCache
from server.engine.request import FinishReason, GenerationOutput, GenerationRequest
from server.engine.runner import BatchRunner, StepOutcome, Verified
from server.engine.sampling import TokenSampler
from server.engine.scheduler import Scheduler, StepPlan
from server.engine.sequence import Sequence
from server.engine.stats import EngineStats
from server.engine.worker_thread import STOPPED, InboxClosed, WorkerThread
from server.llama.context import ContextParams, DecodeStatus, LlamaContext
from server.llama.grammar import GrammarError
from server.llama.model import LlamaModel

logger = logging.getLogger("hearth.engine")


class EngineBusy(RuntimeError):
    """The waiting queue is full; try again later."""


class ContextLengthExceeded(ValueError):
    pass


class EngineDead(RuntimeError):
    """The engine thread has stopped (or the server is shutting down): nothing more can be
    generated."""


@dataclass(frozen=True)
class EngineConfig:
    n_ctx: int
    context_length: int
    max_running: int
    max_waiting: int
    step_token_budget: int
    n_batch: int
    n_ubatch: int
    n_threads: int
    # Prefix cache: sequence ids finished requests may keep (0: no cache), the most KV
    # cells they may hold between requests (None: none with a host tier, else half the
    # context), and the host-RAM tier's budget in bytes (0: no host tier).
    cache_entries: int = 0
    cache_cells: int | None = None
    cache_ram_bytes: int = 0
    # Where the cache is saved at shutdown and restored at start-up (None: not kept).
    cache_dir: Path | None = None
    cache_dir_max_bytes: int = 1 << 30
    # The model runs on a GPU: idle cells cost decoding little there and copying entries
    # out costs much, so finished requests keep their cells until they are needed.
    on_gpu: bool = False
    # Prompt-lookup drafting: draft tokens per decoding sequence and step (0: off), and the
    # n-gram lengths looked up (drafting.py).
    max_draft: int = 0
    # Draft tokens for a sequence decoding alone in its step while its drafts are accepted
    # whole (at least max_draft; Scheduler._add_drafts).
    max_draft_alone: int = 0
    draft_ngram_max: int = 3
    draft_ngram_min: int = 2
    # Run a step's decodes and its prompt chunks as two llama_decode calls (StepPlan.calls):
    # on a CPU a mixed batch costs more than the two apart.
    separate_prompts: bool = False


# Steps with at least this many prompt tokens measure the prefill cost per token.
PREFILL_SAMPLE_TOKENS = 64
# A prediction's drafts start as if this many drafts of the longest length (a lone
# sequence's, max_draft_alone) had been accepted whole: long drafts from the first step at
# concurrency 1 on 2 CPU cores.
PREDICTION_PRIOR_DRAFTS = 2
# /stats's table of step costs is rebuilt every this many steps and when idle, not every
# step: it holds a size for every step width seen, and a GPU step takes ~1 ms.
STEP_TABLE_EVERY = 64


@dataclass(frozen=True, slots=True)
class _Submit:
    request: GenerationRequest


@dataclass(frozen=True, slots=True)
class _Cancel:
    request: GenerationRequest


@dataclass(frozen=True, slots=True)
class _AbortAll:
    reason: str


class Engine:
    def __init__(self, model: LlamaModel, config: EngineConfig) -> None:
        self.model = model
        self.config = config
        n_seq_ids = config.max_running + config.cache_entries
        # The host tier loads entries into a sequence id of its own, then shares them out.
        scratch_seq_id = n_seq_ids if config.cache_entries and config.cache_ram_bytes else None
        self.ctx = LlamaContext(
            model,
            ContextParams(
                n_ctx=config.n_ctx,
                n_seq_max=n_seq_ids + (scratch_seq_id is not None),
                n_batch=config.n_batch,
                n_ubatch=config.n_ubatch,
                n_threads=config.n_threads,
            ),
        )
        self.context_length = min(config.context_length, self.ctx.n_ctx)
        self.runner = BatchRunner(self.ctx, config.n_batch)
        cache: PrefixCache | NoCache
        if config.cache_entries > 0:
            cache = PrefixCache(self.ctx, HostStore(config.cache_ram_bytes), scratch_seq_id)
        else:
            cache = NoCache(self.ctx)
        cache_cells = config.cache_cells
        if cache_cells is None:
            # Idle cells cost every CPU decode step; with a host tier idle entries wait in
            # RAM. On a GPU they stay in the cells until the cells are needed.
            spill_at_once = config.cache_ram_bytes > 0 and not config.on_gpu
            cache_cells = 0 if spill_at_once else self.ctx.n_ctx // 2
        self.scheduler = Scheduler(
            max_running=config.max_running,
            token_budget=config.step_token_budget,
            n_cells=self.ctx.n_ctx,
            cache=cache,
            cache_entries=config.cache_entries,
            cache_cells=cache_cells,
            max_draft=config.max_draft,
            max_draft_alone=config.max_draft_alone,
            separate_prompts=config.separate_prompts,
        )
        # Kept across restarts only when there is a cache to keep.
        self._cache_dir = config.cache_dir if isinstance(cache, PrefixCache) else None
        self.stats = EngineStats(n_cells=self.ctx.n_ctx, max_running=config.max_running)
        # What prompt-lookup drafts of recent sequences did: a new sequence's prior.
        self.draft_population = DraftStats(recency=POPULATION_RECENCY)
        self._worker = WorkerThread("hearth-engine", "the engine thread")
        self._sequences: dict[int, Sequence] = {}  # request id → sequence, engine thread only
        # Outputs wait here until the next llama_decode is about to start: the listener
        # (the event loop) then works while llama.cpp computes instead of competing with
        # the engine thread for the GIL between two steps.
        self._outbox: list[tuple[GenerationRequest, GenerationOutput]] = []
        self._capacity = config.max_running + config.max_waiting
        self._n_active = 0  # submitted and not yet finished; guarded by _lock
        self._lock = threading.Lock()
        # Set when the server starts shutting down: running requests may finish, no new
        # ones are taken.
        self.draining: str | None = None
        self._stopping = False

    # --- any thread -----------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._worker.alive

    @property
    def failure(self) -> str | None:
        """Why the engine thread ended, when it ended by an error (for /health)."""
        return self._worker.failure

    @property
    def active_requests(self) -> int:
        """Requests submitted and not yet answered in full (waiting or running)."""
        with self._lock:
            return self._n_active

    def start(self) -> None:
        """Restore the saved prefix cache and start the engine thread."""
        if self._cache_dir is not None:
            cache_store.load(self.ctx, self.scheduler, self._cache_dir, self.stats.disk)
            self._publish_stats()
        self._worker.start(self._loop, self._answer_all)

    def stop(self) -> None:
        """Stop the thread (requests still in it end as cancelled), save the cache, free."""
        self._worker.stop()
        if self._cache_dir is not None:
            cache_store.save(
                self.ctx,
                self.scheduler,
                self._cache_dir,
                self.config.cache_dir_max_bytes,
                self.stats.disk,
            )
        self.runner.close()
        self.ctx.close()

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request; raises ContextLengthExceeded, EngineBusy or EngineDead without
        queueing."""
        if self.draining is not None:
            raise EngineDead(self.draining)
        n_prompt = len(request.prompt_tokens)
        if n_prompt == 0:
            raise ValueError("the prompt is empty")
        if n_prompt + request.max_tokens > self.context_length:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_length} tokens. "
                f"However, you requested {n_prompt + request.max_tokens} tokens "
                f"({n_prompt} in the prompt, {request.max_tokens} for the completion). "
                "Please reduce the prompt or max_tokens."
            )
        with self._lock:
            if self._n_active >= self._capacity:
                raise EngineBusy(
                    f"all {self.config.max_running} sequences are busy and "
                    f"{self.config.max_waiting} requests are already waiting"
                )
            self._n_active += 1
        try:
            self._worker.put(_Submit(request))
        except InboxClosed as e:
            with self._lock:
                self._n_active -= 1
            raise EngineDead(str(e)) from None

    def cancel(self, request: GenerationRequest) -> None:
        if not request.cancelled.is_set():
            request.cancelled.set()
            self._put_quietly(_Cancel(request))

    def begin_drain(self, reason: str) -> None:
        """Take no new requests; the running and waiting ones go on."""
        self.draining = reason

    def abort_all(self, reason: str) -> None:
        """End every request now, each with an error saying why (thread-safe)."""
        self._put_quietly(_AbortAll(reason))

    def _put_quietly(self, item: object) -> None:
        # InboxClosed: the thread is gone and answered everything it had.
        with contextlib.suppress(InboxClosed):
            self._worker.put(item)

    # --- the engine thread, or a test ------------------------------------------------------

    def step(self) -> None:
        """One engine step: what the inbox holds, then one batch if there is work; its
        outputs are delivered before it returns. (The thread's loop delivers them just
        before the next llama_decode instead, to overlap with it.)"""
        self._take_inbox(block=False)
        self._run_step()
        self._flush_outbox()

    def _loop(self) -> None:
        while not self._stopping:
            self._take_inbox(block=not self.scheduler.has_work)
            if not self._stopping:
                self._run_step()

    def _run_step(self) -> None:
        try:
            if self.scheduler.has_work:
                self._step_batch()
            self._publish_stats()
        except Exception:
            # A bug in the step itself (one request's faults are caught per sequence).
            # Failing what it held keeps the thread, and everyone after.
            logger.exception("engine step failed; failing its requests")
            for seq in list(self._sequences.values()):
                self._close(seq, FinishReason.ERROR, "internal engine error")
        if not self.scheduler.has_work:
            self._flush_outbox()

    def _answer_all(self, leftovers: list[object]) -> None:
        """The thread ended: answer every request it still knew of, and those still in
        its inbox, so no client waits forever."""
        failure = self._worker.failure
        reason = FinishReason.CANCELLED if failure is None else FinishReason.ERROR
        for seq in list(self._sequences.values()):
            self._close(seq, reason, failure)
        for item in leftovers:
            if isinstance(item, _Submit):
                self._settle(item.request, GenerationOutput("", []), reason, failure)
        self._flush_outbox()

    def _flush_outbox(self) -> None:
        for request, output in self._outbox:
            request.emit(output)
        self._outbox.clear()

    def _publish_stats(self) -> None:
        self.stats.running = len(self.scheduler.running)
        self.stats.waiting = len(self.scheduler.waiting)
        self.stats.cells_used = self.scheduler.cells_used
        self.stats.preemptions = self.scheduler.preemptions
        if self.stats.steps % STEP_TABLE_EVERY == 0 or not self.scheduler.has_work:
            self.stats.step_ms_by_tokens = self.scheduler.step_cost.by_size_ms()
        self.stats.sequence_ids = self.scheduler.n_sequence_ids
        self.stats.free_sequence_ids = self.scheduler.free_sequence_ids
        self.stats.active = self._n_active
        cache = self.scheduler.cache
        self.stats.cache_cells = cache.cells
        self.stats.cache_entries = len(cache.entries)
        self.stats.cache = cache.stats
        self.stats.ram_bytes = cache.host.bytes
        self.stats.ram_entries = len(cache.host.entries)
        self.stats.ram_budget = cache.host.budget
        self.stats.tier = cache.host.stats

    def _take_inbox(self, block: bool) -> None:
        """Take new requests, cancellations and aborts (waiting for one if block)."""
        item = self._worker.get(block)
        while item is not None:
            if item is STOPPED:
                self._stopping = True
                return
            if isinstance(item, _Submit):
                self._add(item.request)
            elif isinstance(item, _Cancel):
                seq = self._sequences.get(item.request.id)
                if seq is not None:  # else it finished already, or _add settled it
                    self._close(seq, FinishReason.CANCELLED)
            elif isinstance(item, _AbortAll):
                for seq in list(self._sequences.values()):
                    self._close(seq, FinishReason.ERROR, item.reason)
            item = self._worker.get(block=False)

    def _add(self, request: GenerationRequest) -> None:
        if request.cancelled.is_set():
            self._settle(request, GenerationOutput("", []), FinishReason.CANCELLED)
            return
        banned = self.model.eog_tokens if request.ignore_eos else frozenset()
        try:
            sampler = TokenSampler(request.sampling, self.model, self.context_length, banned)
            detok = IncrementalDetokenizer(self.model.token_bytes, request.stop)
        except GrammarError as e:
            # Callers check grammars before submitting; this is the last line of defence.
            self._settle(request, GenerationOutput("", []), FinishReason.ERROR, error=str(e))
            return
        except Exception:
            # Whatever one request carries fails that request, never the engine thread.
            logger.exception("could not admit request %d", request.id)
            self._settle(
                request, GenerationOutput("", []), FinishReason.ERROR, "could not start it"
            )
            return
        seq = Sequence(request, sampler, detok)
        c = self.config
        if c.max_draft and request.prediction:
            lookup = PromptLookup(c.draft_ngram_max, c.draft_ngram_min)
            seq.drafter = PredictionLookup(
                request.prediction, seq.n_prompt, lookup if request.speculative else None
            )
            seq.draft_stats = DraftStats.expecting(
                self.scheduler.max_draft_alone, PREDICTION_PRIOR_DRAFTS
            )
        elif c.max_draft and request.speculative:
            seq.drafter = PromptLookup(c.draft_ngram_max, c.draft_ngram_min)
            seq.draft_stats = self.draft_population.for_new_sequence(self.scheduler.max_draft_alone)
        self._sequences[request.id] = seq
        self.scheduler.add(seq)

    def _step_batch(self) -> None:
        t0 = time.perf_counter()
        plan = self.scheduler.schedule()
        if not plan.chunks:
            return
        for call in plan.calls(self.scheduler.separate_prompts):
            if not self._run_call(call, t0):
                return
            t0 = time.perf_counter()

    def _run_call(self, plan: StepPlan, t0: float) -> bool:
        """One llama_decode over the plan, and its outcome applied. False when the decode
        failed (what is left of the step waits for the next one)."""
        t1 = time.perf_counter()
        outcome = self.runner.run(plan, before_decode=self._flush_outbox)
        if outcome.status != DecodeStatus.OK:
            self._on_decode_failure(outcome.status, plan)
            return False
        for chunk in plan.chunks:
            chunk.seq.n_computed += chunk.n_tokens
            self.scheduler.on_computed(chunk.seq)
        self.stats.record_step(
            n_sequences=len(plan.chunks),
            n_tokens=outcome.n_tokens,
            n_prompt_tokens=outcome.n_prompt_tokens,
            seconds=outcome.seconds,
        )
        if outcome.n_prompt_tokens >= PREFILL_SAMPLE_TOKENS:
            # What computing a prompt costs here, for the host tier's spill-or-drop choice.
            self.scheduler.cache.host.policy.observe_prefill(
                outcome.seconds + outcome.sample_seconds, outcome.n_tokens
            )
        t2 = time.perf_counter()
        self._apply(outcome)
        t3 = time.perf_counter()
        if outcome.n_prompt_tokens == 0:
            # Drafting's yardstick is what a decode step costs as drafts widen it. Prompt
            # chunks run at prefill's efficiency (about half a decode token's marginal cost
            # here), so steps holding them would bend the fit and make drafts look cheap.
            self.scheduler.step_cost.observe(outcome.n_tokens, t3 - t0)
        elif outcome.n_prompt_tokens >= PREFILL_SAMPLE_TOKENS:
            self.scheduler.step_cost.observe_prompt_step(outcome.n_tokens, t3 - t0)
        profile = self.stats.profile
        profile.steps += 1
        profile.schedule += t1 - t0
        profile.build += outcome.build_seconds
        profile.flush += outcome.flush_seconds
        profile.decode += outcome.seconds
        profile.sample += outcome.sample_seconds
        profile.apply += t3 - t2
        return True

    def _apply(self, outcome: StepOutcome) -> None:
        for seq, error in outcome.failed:
            self._close(seq, FinishReason.ERROR, error)
        for seq, scores in outcome.scored:
            if seq.prompt_logprobs is not None:
                seq.prompt_logprobs.extend(scores)
        for verified in outcome.verified:
            seq = verified.seq
            if self._sequences.get(seq.request.id) is not seq:
                continue
            try:
                self._accept_verified(verified)
            except Exception:
                logger.exception("accepting drafted tokens of request %d failed", seq.request.id)
                self._close(seq, FinishReason.ERROR, "internal error while sampling")
        for seq, token, logprob in outcome.sampled:
            if self._sequences.get(seq.request.id) is not seq:
                continue  # failed or finished meanwhile
            try:
                if token is None:  # the grammar is complete: the output ends here
                    out = GenerationOutput(seq.detokenizer.finish(), [])
                    self._finish(seq, FinishReason.STOP, out)
                else:
                    self._accept(seq, token, logprob)
            except Exception:
                logger.exception("accepting a token of request %d failed", seq.request.id)
                self._close(seq, FinishReason.ERROR, "internal error while sampling")

    def _accept_verified(self, verified: Verified) -> None:
        """A verified draft: the accepted draft tokens and the sampler's next token after
        them. All of the draft's KV was computed in this step: the rejected tokens' cells
        go now; the accepted ones are kept (if the output ends inside the run, at a stop
        string, end of generation or max_tokens, `_finish` drops the cells past it)."""
        seq, tokens = verified.seq, verified.tokens
        seq.draft_stats.record(verified.drafted, verified.accepted)
        self.stats.draft_tokens += verified.drafted
        self.stats.draft_accepted += verified.accepted
        self.stats.draft_steps += 1
        assert seq.seq_id is not None
        # The draft's first token went at n_computed; accepted ones stay.
        self.ctx.seq_remove(seq.seq_id, seq.n_computed + verified.accepted, -1)
        request = seq.request
        for i, token in enumerate(tokens):
            if self._sequences.get(request.id) is not seq:
                return  # finished by the token before
            if i > 0:
                seq.n_computed += 1  # the token before this one was a draft, computed
            if token is None:  # the grammar is complete: the output ends here
                self._finish(seq, FinishReason.STOP, GenerationOutput(seq.detokenizer.finish(), []))
                return
            logprob = None if verified.logprobs is None else verified.logprobs[i]
            self._accept(seq, token, logprob)

    def _on_decode_failure(self, status: int, plan: StepPlan) -> None:
        if status == DecodeStatus.NO_KV_SLOT and self.scheduler.make_room():
            # llama.cpp found no room for this batch though our count said it fits
            # (fragmented cells): something was evicted or preempted; the next step retries.
            logger.warning("llama_decode found no KV slot; made room and retrying")
            return
        logger.error("llama_decode failed with status %d", status)
        for chunk in plan.chunks:
            self._close(chunk.seq, FinishReason.ERROR, f"llama_decode failed ({status})")

    def _accept(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> None:
        request = seq.request
        seq.tokens.append(token)
        out = GenerationOutput("", [token], logprobs=None if logprob is None else [logprob])
        if seq.prompt_logprobs is not None and seq.n_generated == 1:
            out.prompt_logprobs = seq.prompt_logprobs
        if token in self.model.eog_tokens and not request.ignore_eos:
            out.text = seq.detokenizer.finish()
            out.logprobs = None  # not part of the content
            self._finish(seq, FinishReason.STOP, out)
            return
        out.text, stopped = seq.detokenizer.push(token)
        if stopped:
            out.stop_sequence = seq.detokenizer.matched_stop
            self._finish(seq, FinishReason.STOP, out)
        elif seq.n_generated >= request.max_tokens or len(seq.tokens) >= self.context_length:
            out.text += seq.detokenizer.finish()
            self._finish(seq, FinishReason.LENGTH, out)
        else:
            self._outbox.append((request, out))

    def _close(self, seq: Sequence, reason: FinishReason, error: str | None = None) -> None:
        """Finish a sequence whatever state it is in (even when finishing it raises); its
        request is answered exactly once."""
        if self._sequences.get(seq.request.id) is not seq:
            return  # already finished
        try:
            self._finish(seq, reason, error=error)
        except Exception:
            logger.exception("finishing request %d failed; dropping it", seq.request.id)
            self._sequences.pop(seq.request.id, None)
            self.scheduler.forget(seq)
            self._settle(seq.request, GenerationOutput("", []), reason, error)

    def _finish(
        self,
        seq: Sequence,
        reason: FinishReason,
        output: GenerationOutput | None = None,
        error: str | None = None,
    ) -> None:
        if seq.drafter is not None and seq.seq_id is not None:
            # Draft tokens accepted past where the output ended have cells; they go, so
            # the cache records exactly what is computed.
            self.ctx.seq_remove(seq.seq_id, seq.n_computed, -1)
        self.scheduler.remove(seq)
        seq.sampler.close()
        del self._sequences[seq.request.id]
        output = output or GenerationOutput("", [])
        output.completion_tokens = seq.n_generated
        output.cached_tokens = seq.n_cached or 0
        if self.scheduler.cache.shares_prefixes:  # what it computed of its prompt stays
            prompt = len(seq.request.prompt_tokens)
            output.cache_written_tokens = max(0, prompt - output.cached_tokens)
        predicted = seq.request.prediction
        if predicted:
            drafter = seq.drafter
            accepted = 0
            if isinstance(drafter, PredictionLookup):
                drafter.extend(seq.tokens[len(drafter.tokens) :])
                accepted = drafter.matched
            output.accepted_prediction_tokens = accepted
            output.rejected_prediction_tokens = max(0, len(predicted) - accepted)
        self._settle(seq.request, output, reason, error)

    def _settle(
        self,
        request: GenerationRequest,
        output: GenerationOutput,
        reason: FinishReason,
        error: str | None = None,
    ) -> None:
        logger.debug(
            "request %d finished: %s after %d tokens", request.id, reason, output.completion_tokens
        )
        with self._lock:
            self._n_active -= 1
        self.stats.requests_finished += 1
        output.finish_reason = reason
        output.prompt_tokens = len(request.prompt_tokens)
        output.error = error
        self._outbox.append((request, output))
