"""The engine: one thread that owns the llama.cpp context and runs continuous batching.

Every step is ONE llama_decode over all running sequences (a decode token for each
generating sequence plus chunks of pending prompts). Requests join and leave between steps.
Other threads talk to it only through `submit` and `cancel`, which are thread-safe; results
go back through each request's `emit` callback.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from server.engine import cache_store
from server.engine.context import ContextParams, DecodeStatus, LlamaContext, TokenBatch
from server.engine.detokenizer import IncrementalDetokenizer
from server.engine.grammar import GrammarError
from server.engine.logprobs import TokenLogprob, token_logprob
from server.engine.model import LlamaModel
from server.engine.request import FinishReason, GenerationOutput, GenerationRequest
from server.engine.sampling import TokenSampler
from server.engine.scheduler import Scheduler, StepPlan
from server.engine.sequence import Sequence
from server.engine.stats import EngineStats

logger = logging.getLogger("hearth.engine")


class EngineBusy(RuntimeError):
    """The waiting queue is full; try again later."""


class ContextLengthExceeded(ValueError):
    pass


class EngineDead(RuntimeError):
    """The engine thread has stopped; nothing more can be generated."""


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
    # Prefix cache: sequence ids finished requests may keep (0: no cache), and the most
    # KV cells they may hold between requests.
    cache_entries: int = 0
    cache_cells: int = 0
    # Where the cache is saved at shutdown and restored at start-up (None: not kept).
    cache_dir: Path | None = None
    cache_dir_max_bytes: int = 1 << 30


_STOP = object()


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
        self.ctx = LlamaContext(
            model,
            ContextParams(
                n_ctx=config.n_ctx,
                n_seq_max=config.max_running + config.cache_entries,
                n_batch=config.n_batch,
                n_ubatch=config.n_ubatch,
                n_threads=config.n_threads,
            ),
        )
        self.context_length = min(config.context_length, self.ctx.n_ctx)
        self._batch = TokenBatch(config.n_batch)
        self.scheduler = Scheduler(
            max_running=config.max_running,
            token_budget=config.step_token_budget,
            n_cells=self.ctx.n_ctx,
            kv=self.ctx,
            cache_entries=config.cache_entries,
            cache_cells=config.cache_cells or self.ctx.n_ctx // 2,
        )
        self.stats = EngineStats(n_cells=self.ctx.n_ctx, max_running=config.max_running)
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._sequences: dict[int, Sequence] = {}  # request id → sequence, engine thread only
        # Outputs wait here until the next llama_decode is about to start: the listener
        # (the event loop) then works while llama.cpp computes instead of competing with
        # the engine thread for the GIL between two steps.
        self._outbox: list[tuple[GenerationRequest, GenerationOutput]] = []
        self._capacity = config.max_running + config.max_waiting
        self._n_active = 0  # submitted and not yet finished; guarded by _lock
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Why the engine thread ended, when it ended by an error (for /health).
        self.failure: str | None = None
        # Set when the server starts shutting down: running requests may finish, no new
        # ones are taken.
        self.draining: str | None = None

    # --- any thread -----------------------------------------------------------------------

    def start(self) -> None:
        if self.config.cache_dir is not None and self.scheduler.cache.enabled:
            cache_store.load(self.ctx, self.scheduler, self.config.cache_dir)
            self._publish_stats()
        self._thread = threading.Thread(target=self._run, name="hearth-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._inbox.put(_STOP)
            self._thread.join()
            self._thread = None
            if self.config.cache_dir is not None and self.scheduler.cache.enabled:
                cache_store.save(
                    self.ctx, self.scheduler, self.config.cache_dir, self.config.cache_dir_max_bytes
                )
        self._batch.close()
        self.ctx.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request; raises ContextLengthExceeded, EngineBusy or EngineDead without
        queueing."""
        if not self.alive:
            raise EngineDead(self.failure or "the engine is not running")
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
        self._inbox.put(_Submit(request))

    def begin_drain(self, reason: str) -> None:
        """Take no new requests; the running and waiting ones go on."""
        self.draining = reason

    def abort_all(self, reason: str) -> None:
        """End every request now, each with an error saying why (thread-safe)."""
        self._inbox.put(_AbortAll(reason))

    def cancel(self, request: GenerationRequest) -> None:
        if not request.cancelled.is_set():
            request.cancelled.set()
            self._inbox.put(_Cancel(request))

    @property
    def n_active(self) -> int:
        return self._n_active

    # --- engine thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._drain_inbox(block=not self.scheduler.has_work):
                try:
                    if self.scheduler.has_work:
                        self._step()
                    self._publish_stats()
                except Exception:
                    # A bug in the step itself (not one request's: those are caught per
                    # sequence). Failing what runs keeps the thread, and everyone after.
                    logger.exception("engine step failed; failing the running requests")
                    for seq in list(self._sequences.values()):
                        self._close(seq, FinishReason.ERROR, "internal engine error")
                if not self.scheduler.has_work:
                    self._flush_outbox()
        except BaseException as e:
            self.failure = f"the engine thread stopped: {type(e).__name__}: {e}"
            logger.critical("%s", self.failure, exc_info=True)
            raise
        finally:
            self._close_all()

    def _close_all(self) -> None:
        """Answer every request the engine still knows of, so no client waits forever."""
        reason = FinishReason.CANCELLED if self.failure is None else FinishReason.ERROR
        for seq in list(self._sequences.values()):
            self._close(seq, reason, self.failure)
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if isinstance(item, _Submit):
                self._settle(item.request, GenerationOutput("", []), reason, self.failure)
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
        self.stats.sequence_ids = self.scheduler.n_sequence_ids
        self.stats.free_sequence_ids = self.scheduler.free_sequence_ids
        self.stats.active = self._n_active
        cache = self.scheduler.cache
        self.stats.cache_cells = cache.cells
        self.stats.cache_entries = len(cache.entries)
        self.stats.cache = cache.stats

    def _drain_inbox(self, block: bool) -> bool:
        """Take new requests and cancellations; False when asked to stop."""
        if not block and self._inbox.empty():
            return True
        item = self._inbox.get()
        while True:
            if item is _STOP:
                return False
            if isinstance(item, _Submit):
                self._add(item.request)
            elif isinstance(item, _Cancel):
                seq = self._sequences.get(item.request.id)
                if seq is not None:  # else it finished already, or _add settled it
                    self._close(seq, FinishReason.CANCELLED)
            elif isinstance(item, _AbortAll):
                for seq in list(self._sequences.values()):
                    self._close(seq, FinishReason.ERROR, item.reason)
            if self._inbox.empty():
                return True
            item = self._inbox.get()

    def _add(self, request: GenerationRequest) -> None:
        if request.cancelled.is_set():
            self._settle(request, GenerationOutput("", []), FinishReason.CANCELLED)
            return
        banned = self.model.eog_tokens if request.ignore_eos else frozenset()
        try:
            sampler = TokenSampler(
                request.sampling,
                self.model.n_vocab,
                self.context_length,
                banned,
                vocab=self.model.vocab,
            )
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
        self._sequences[request.id] = seq
        self.scheduler.add(seq)

    def _step(self) -> None:
        plan = self.scheduler.schedule()
        if not plan.chunks:
            return
        batch = self._batch
        batch.clear()
        sample_at: list[tuple[Sequence, int]] = []
        # (sequence, first position, its batch index, count) of prompt tokens to score.
        score_at: list[tuple[Sequence, int, int, int]] = []
        n_prompt_tokens = 0
        for chunk in plan.chunks:
            seq = chunk.seq
            start = seq.n_computed
            end = start + chunk.n_tokens
            tokens = seq.tokens
            last = len(tokens) - 1
            # Logits at position p score prompt token p + 1, for requests that ask.
            scored_end = min(end, seq.n_prompt - 1) if seq.wants_prompt_logprobs else start
            first = batch.n_tokens
            for pos in range(start, end):
                index = batch.add(tokens[pos], pos, seq.seq_id, pos == last or pos < scored_end)
            if scored_end > start:
                score_at.append((seq, start, first, scored_end - start))
            if end - 1 == last:
                sample_at.append((seq, index))
            if seq.is_prefilling:
                n_prompt_tokens += chunk.n_tokens

        self._flush_outbox()
        t0 = time.perf_counter()
        status = self.ctx.decode(batch)
        elapsed = time.perf_counter() - t0
        if status != DecodeStatus.OK:
            self._on_decode_failure(status, plan)
            return
        for chunk in plan.chunks:
            chunk.seq.n_computed += chunk.n_tokens
            self.scheduler.on_computed(chunk.seq)
        self.stats.record_step(
            n_sequences=len(plan.chunks),
            n_tokens=batch.n_tokens,
            n_prompt_tokens=n_prompt_tokens,
            seconds=elapsed,
        )
        for seq, pos, index, count in score_at:
            try:
                self._score_prompt(seq, pos, index, count)
            except Exception:
                logger.exception("scoring the prompt of request %d failed", seq.request.id)
                self._close(seq, FinishReason.ERROR, "internal error while scoring the prompt")
        for seq, index in sample_at:
            if seq.request.cancelled.is_set() or seq.request.id not in self._sequences:
                continue  # cancelled (finished at the next drain) or already failed
            try:
                self._sample(seq, index)
            except Exception:
                logger.exception("sampling request %d failed", seq.request.id)
                self._close(seq, FinishReason.ERROR, "internal error while sampling")

    def _sample(self, seq: Sequence, index: int) -> None:
        token = seq.sampler.sample(self.ctx, index)
        if token is None:  # the grammar is complete: the output ends here
            self._finish(seq, FinishReason.STOP, GenerationOutput(seq.detokenizer.finish(), []))
            return
        n_top = seq.request.logprobs
        logprob = None if n_top is None else token_logprob(self.ctx.logits(index), token, n_top)
        self._accept(seq, token, logprob)

    def _score_prompt(self, seq: Sequence, pos: int, index: int, count: int) -> None:
        scores = seq.prompt_logprobs
        assert scores is not None and seq.request.prompt_logprobs is not None
        for k in range(count):
            if len(scores) == pos + k:  # not yet scored (a recomputed prompt is not rescored)
                logits = self.ctx.logits(index + k)
                target = seq.tokens[pos + k + 1]
                scores.append(token_logprob(logits, target, seq.request.prompt_logprobs))

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
        self.scheduler.remove(seq)
        seq.sampler.close()
        del self._sequences[seq.request.id]
        output = output or GenerationOutput("", [])
        output.completion_tokens = seq.n_generated
        output.cached_tokens = seq.n_cached or 0
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
