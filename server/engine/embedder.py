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


@dataclass
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

    def submit(self, inputs: list[list[int]]) -> concurrent.futures.Future[np.ndarray]:
        """Queue token-id inputs (each 1..max_tokens long); the future gets an
        (n_inputs, dim) float32 array of unit vectors."""
        for tokens in inputs:
            if not tokens or len(tokens) > self.max_tokens:
                raise ValueError(f"inputs must hold 1 to {self.max_tokens} tokens")
        future: concurrent.futures.Future[np.ndarray] = concurrent.futures.Future()
        self._inbox.put(_Job(inputs, future))
        return future

    # --- embedder thread ------------------------------------------------------------------

    def _run(self) -> None:
        pending: deque[tuple[_Job, int]] = deque()
        while True:
            item = self._inbox.get() if not pending else self._next_nowait()
            if item is _STOP:
                break
            if isinstance(item, _Job):
                self._accept(item, pending)
                continue  # take everything queued before computing
            if pending:
                try:
                    self._compute(pending)
                except Exception as e:  # never leave a caller waiting forever
                    logger.exception("embedding batch failed")
                    for job, _ in pending:
                        if not job.future.done():
                            job.future.set_exception(EmbedderError(str(e)))
                    pending.clear()
        for job, _ in pending:
            if not job.future.done():
                job.future.set_exception(EmbedderError("the server is shutting down"))

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

    def _compute(self, pending: deque[tuple[_Job, int]]) -> None:
        """One llama.cpp call over as many pending inputs as fit."""
        batch = self._batch
        batch.clear()
        taken: list[tuple[_Job, int]] = []
        while pending and len(taken) < self.n_seq_max:
            job, i = pending[0]
            tokens = job.inputs[i]
            if batch.n_tokens + len(tokens) > self.n_ctx:
                break
            seq_id = len(taken)
            for pos, token in enumerate(tokens):
                batch.add(token, pos, seq_id, True)
            taken.append(pending.popleft())
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
            if job.remaining == 0:
                job.future.set_result(job.vectors)
        self.stats.batches += 1
        self.stats.inputs += len(taken)
        self.stats.tokens += batch.n_tokens
        self.stats.max_inputs_in_batch = max(self.stats.max_inputs_in_batch, len(taken))
