"""Sentence embeddings: an embedding model in its own llama.cpp context and thread.

Inputs from concurrent requests are packed into shared llama_decode/llama_encode calls, one
sequence id per input, as many as fit in a batch; each request gets its vectors as soon as
its last input is done. The model's pooling (MEAN for MiniLM) runs inside llama.cpp;
vectors come back L2-normalised, as OpenAI's and sentence-transformers' do.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field

import llama_cpp
import numpy as np

from server.engine.context import TokenBatch
from server.engine.model import LlamaModel
from server.engine.threadpool import ThreadPool

logger = logging.getLogger("hearth.embedder")


class EmbedderError(RuntimeError):
    pass


class EmbedderBusy(EmbedderError):
    """Too many inputs are waiting already; try again later."""


# Inputs waiting or being embedded, across requests: beyond it, submit refuses more (a
# full queue holds ~2 minutes of work on 2 CPU cores).
MAX_PENDING_INPUTS = 16384


@dataclass(eq=False)
class _Job:
    inputs: list[list[int]]
    future: concurrent.futures.Future[np.ndarray]
    vectors: np.ndarray | None = None
    remaining: int = 0


@dataclass
class EmbedderStats:
    requests: int = 0
    inputs: int = 0
    tokens: int = 0
    batches: int = 0
    max_inputs_in_batch: int = 0
    seconds: float = field(default=0.0)


_STOP = object()


def _fail(jobs: set[_Job], error: Exception) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(error)


class Embedder:
    def __init__(self, model: LlamaModel, n_ctx: int, n_seq_max: int, n_threads: int) -> None:
        if n_ctx % n_seq_max:
            # llama.cpp aborts the process on this for MEAN pooling; refuse it here instead.
            raise EmbedderError(
                f"embedding n_ctx ({n_ctx}) must be a multiple of n_seq_max ({n_seq_max})"
            )
        self.model = model
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_seq_max = n_seq_max
        params.n_threads = params.n_threads_batch = n_threads
        params.embeddings = True
        params.kv_unified = True
        params.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(model.ptr, params)
        if not self.ctx:
            raise EmbedderError("llama.cpp could not create the embedding context")
        self._threadpool = ThreadPool(self.ctx, n_threads)
        self.n_ctx = n_ctx
        self.n_seq_max = n_seq_max
        self.dim: int = llama_cpp.llama_model_n_embd(model.ptr)
        # The longest input: the model's trained positions, and what fits in one batch
        # (a non-causal model must see a whole input in one micro-batch).
        self.max_tokens = min(model.info.n_ctx_train or n_ctx, n_ctx)
        self._encoder_only = bool(
            llama_cpp.llama_model_has_encoder(model.ptr)
            and not llama_cpp.llama_model_has_decoder(model.ptr)
        )
        self._memory = llama_cpp.llama_get_memory(self.ctx)
        self._batch = TokenBatch(n_ctx)
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending_inputs = 0  # submitted and not yet answered; guarded by _lock
        self._lock = threading.Lock()
        self.failure: str | None = None  # why the thread ended, if by an error
        self.stats = EmbedderStats()

    # --- any thread -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hearth-embedder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._inbox.put(_STOP)
            self._thread.join()
            self._thread = None
        self._batch.close()
        self._threadpool.close()
        llama_cpp.llama_free(self.ctx)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, inputs: list[list[int]]) -> concurrent.futures.Future[np.ndarray]:
        """Queue token-id inputs (each 1..max_tokens long); the future gets an
        (n_inputs, dim) float32 array of unit vectors. Raises EmbedderBusy when
        MAX_PENDING_INPUTS are waiting already, EmbedderError when the thread is gone."""
        for tokens in inputs:
            if not tokens or len(tokens) > self.max_tokens:
                raise ValueError(f"inputs must hold 1 to {self.max_tokens} tokens")
            if not all(0 <= t < self.model.n_vocab for t in tokens):
                raise ValueError("inputs must hold token ids of the vocabulary")
        if not self.alive:
            raise EmbedderError(self.failure or "the embedding engine is not running")
        with self._lock:
            if self._pending_inputs + len(inputs) > MAX_PENDING_INPUTS:
                raise EmbedderBusy(f"{self._pending_inputs} inputs are waiting to be embedded")
            self._pending_inputs += len(inputs)
        future: concurrent.futures.Future[np.ndarray] = concurrent.futures.Future()
        future.add_done_callback(lambda _: self._release(len(inputs)))
        self._inbox.put(_Job(inputs, future))
        return future

    def _release(self, n_inputs: int) -> None:
        with self._lock:
            self._pending_inputs -= n_inputs

    # --- embedder thread ------------------------------------------------------------------

    def _run(self) -> None:
        pending: deque[tuple[_Job, int]] = deque()
        taken: list[tuple[_Job, int]] = []
        try:
            while True:
                item = self._inbox.get() if not pending else self._next_nowait()
                if item is _STOP:
                    break
                if isinstance(item, _Job):
                    self._accept(item, pending)
                    continue  # take everything queued before computing
                if pending:
                    taken = self._take(pending)
                    try:
                        self._compute(taken)
                    except Exception as e:  # every job in the batch fails, none hangs
                        logger.exception("embedding batch failed")
                        failed = {job for job, _ in taken}
                        _fail(failed, EmbedderError(str(e)))
                        rest = [item for item in pending if item[0] not in failed]
                        pending.clear()
                        pending.extend(rest)
        except BaseException as e:
            self.failure = f"the embedding thread stopped: {type(e).__name__}: {e}"
            logger.critical("%s", self.failure, exc_info=True)
            raise
        finally:
            # Whatever is still queued is answered, so no caller waits forever.
            while (item := self._next_nowait()) is not None:
                if isinstance(item, _Job):
                    pending.append((item, 0))
            reason = self.failure or "the server is shutting down"
            _fail({job for job, _ in [*taken, *pending]}, EmbedderError(reason))

    def _next_nowait(self) -> object | None:
        try:
            return self._inbox.get_nowait()
        except queue.Empty:
            return None

    def _accept(self, job: _Job, pending: deque[tuple[_Job, int]]) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        job.vectors = np.empty((len(job.inputs), self.dim), dtype=np.float32)
        job.remaining = len(job.inputs)
        self.stats.requests += 1
        pending.extend((job, i) for i in range(len(job.inputs)))

    def _take(self, pending: deque[tuple[_Job, int]]) -> list[tuple[_Job, int]]:
        """As many pending inputs as fit in one llama.cpp call."""
        taken: list[tuple[_Job, int]] = []
        n_tokens = 0
        while pending and len(taken) < self.n_seq_max:
            job, i = pending[0]
            if taken and n_tokens + len(job.inputs[i]) > self.n_ctx:
                break
            n_tokens += len(job.inputs[i])
            taken.append(pending.popleft())
        return taken

    def _compute(self, taken: list[tuple[_Job, int]]) -> None:
        """One llama.cpp call over the taken inputs."""
        batch = self._batch
        batch.clear()
        for seq_id, (job, i) in enumerate(taken):
            for pos, token in enumerate(job.inputs[i]):
                batch.add(token, pos, seq_id, True)
        if self._memory:
            llama_cpp.llama_memory_clear(self._memory, True)
        batch.raw.n_tokens = batch.n_tokens
        status = (llama_cpp.llama_encode if self._encoder_only else llama_cpp.llama_decode)(
            self.ctx, batch.raw
        )
        if status != 0:
            raise EmbedderError(f"llama.cpp embedding call failed ({status})")
        for seq_id, (job, i) in enumerate(taken):
            ptr = llama_cpp.llama_get_embeddings_seq(self.ctx, seq_id)
            if not ptr:
                raise EmbedderError("the model produced no pooled embedding")
            vec = np.ctypeslib.as_array(
                ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.dim,)
            )
            norm = float(np.linalg.norm(vec))
            assert job.vectors is not None
            job.vectors[i] = vec / norm if norm > 0 else vec
            job.remaining -= 1
            if job.remaining == 0 and not job.future.done():
                job.future.set_result(job.vectors)
        self.stats.batches += 1
        self.stats.inputs += len(taken)
        self.stats.tokens += batch.n_tokens
        self.stats.max_inputs_in_batch = max(self.stats.max_inputs_in_batch, len(taken))
