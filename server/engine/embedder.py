"""Sentence embeddings: an embedding model in its own llama.cpp context and thread.

Inputs from concurrent requests are packed into shared llama.cpp calls, one sequence id
per input, as many as fit in a batch; each request gets its vectors as soon as its last
input is done. The model's pooling (MEAN for MiniLM) runs inside llama.cpp; vectors come
back L2-normalised, as OpenAI's and sentence-transformers' do. It implements retrieval's
Embeddings interface (tokenize, count_tokens, submit, dim, max_tokens).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np

from server.engine.worker_thread import STOPPED, InboxClosed, WorkerThread
from server.llama.context import ContextParams, LlamaContext, TokenBatch
from server.llama.model import LlamaModel

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


def _fail(jobs: set[_Job], error: Exception) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(error)


def embedding_width(path: Path) -> int:
    """How long a GGUF embedding model's vectors are (its n_embd), without a context."""
    model = LlamaModel(path, n_gpu_layers=0)
    try:
        return int(llama_cpp.llama_model_n_embd(model.ptr))
    finally:
        model.close()


class Embedder:
    def __init__(
        self,
        model: LlamaModel,
        n_ctx: int,
        n_seq_max: int,
        n_threads: int,
        normalize: bool = True,
        thread: tuple[str, str] = ("hearth-embedder", "the embedding thread"),
    ) -> None:
        if n_ctx % n_seq_max:
            # llama.cpp aborts the process on this for MEAN pooling; refuse it here instead.
            raise EmbedderError(
                f"embedding n_ctx ({n_ctx}) must be a multiple of n_seq_max ({n_seq_max})"
            )
        self.model = model
        # One batch is the whole context: a non-causal model must see a whole input in one
        # micro-batch.
        self.ctx = LlamaContext(
            model,
            ContextParams(
                n_ctx=n_ctx,
                n_seq_max=n_seq_max,
                n_batch=n_ctx,
                n_ubatch=n_ctx,
                n_threads=n_threads,
                embeddings=True,
            ),
        )
        self.n_ctx = n_ctx
        self.n_seq_max = n_seq_max
        self.normalize = normalize  # unit vectors; off for a reranker's scores
        self.dim: int = self.ctx.pooled_size
        # The longest input: the model's trained positions, and what fits in one batch.
        self.max_tokens = min(model.info.n_ctx_train or n_ctx, n_ctx)
        self._batch = TokenBatch(n_ctx)
        self._worker = WorkerThread(*thread)  # (name, what /health calls it)
        # Thread only: inputs accepted and not yet computed, and the batch being computed.
        self._pending: deque[tuple[_Job, int]] = deque()
        self._taken: list[tuple[_Job, int]] = []
        self._pending_inputs = 0  # submitted and not yet answered; guarded by _lock
        self._lock = threading.Lock()
        self.stats = EmbedderStats()

    @classmethod
    def from_file(
        cls, path: Path, n_ctx: int, n_seq_max: int, n_threads: int, n_gpu_layers: int = 0
    ) -> Embedder:
        """An embedder over a GGUF file of its own (a Ray actor builds one where it runs)."""
        model = LlamaModel(path, n_gpu_layers=n_gpu_layers)
        try:
            return cls(model, n_ctx, n_seq_max, n_threads)
        except Exception:
            model.close()
            raise

    # --- any thread -----------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._worker.alive

    @property
    def failure(self) -> str | None:
        """Why the thread ended, when it ended by an error (for /health)."""
        return self._worker.failure

    def start(self) -> None:
        self._worker.start(self._loop, self._answer_all)

    def stop(self) -> None:
        self._worker.stop()
        self._batch.close()
        self.ctx.close()

    def tokenize(self, text: str) -> list[int]:
        """Token ids of an input, with the model's markers ([CLS] ... [SEP])."""
        return self.model.tokenize(text, add_special=True, parse_special=False)

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenize(text, add_special=False, parse_special=False))

    def submit(self, inputs: list[list[int]]) -> concurrent.futures.Future[np.ndarray]:
        """Queue token-id inputs (each 1..max_tokens long); the future gets an
        (n_inputs, dim) float32 array of unit vectors. Raises EmbedderBusy when
        MAX_PENDING_INPUTS are waiting already, EmbedderError when the thread is gone."""
        for tokens in inputs:
            if not tokens or len(tokens) > self.max_tokens:
                raise ValueError(f"inputs must hold 1 to {self.max_tokens} tokens")
            if not all(0 <= t < self.model.n_vocab for t in tokens):
                raise ValueError("inputs must hold token ids of the vocabulary")
        with self._lock:
            if self._pending_inputs + len(inputs) > MAX_PENDING_INPUTS:
                raise EmbedderBusy(f"{self._pending_inputs} inputs are waiting to be embedded")
            self._pending_inputs += len(inputs)
        future: concurrent.futures.Future[np.ndarray] = concurrent.futures.Future()
        future.add_done_callback(lambda _: self._release(len(inputs)))
        try:
            self._worker.put(_Job(inputs, future))
        except InboxClosed as e:
            future.cancel()  # runs the callback: the inputs are no longer pending
            raise EmbedderError(str(e)) from None
        return future

    def _release(self, n_inputs: int) -> None:
        with self._lock:
            self._pending_inputs -= n_inputs

    # --- embedder thread ------------------------------------------------------------------

    def _loop(self) -> None:
        pending = self._pending
        while True:
            item = self._worker.get(block=not pending)
            if item is STOPPED:
                return
            if isinstance(item, _Job):
                self._accept(item)
                continue  # take everything queued before computing
            if pending:
                self._taken = self._take()
                try:
                    self._compute(self._taken)
                except Exception as e:  # every job in the batch fails, none hangs
                    logger.exception("embedding batch failed")
                    failed = {job for job, _ in self._taken}
                    _fail(failed, EmbedderError(str(e)))
                    rest = [item for item in pending if item[0] not in failed]
                    pending.clear()
                    pending.extend(rest)

    def _answer_all(self, leftovers: list[object]) -> None:
        """The thread ended: whatever is still queued or half done is answered."""
        jobs = {job for job, _ in [*self._taken, *self._pending]}
        jobs |= {item for item in leftovers if isinstance(item, _Job)}
        _fail(jobs, EmbedderError(self._worker.failure or "the server is shutting down"))

    def _accept(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        job.vectors = np.empty((len(job.inputs), self.dim), dtype=np.float32)
        job.remaining = len(job.inputs)
        self.stats.requests += 1
        self._pending.extend((job, i) for i in range(len(job.inputs)))

    def _take(self) -> list[tuple[_Job, int]]:
        """As many pending inputs as fit in one llama.cpp call."""
        taken: list[tuple[_Job, int]] = []
        n_tokens = 0
        pending = self._pending
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
        self.ctx.clear()
        status = self.ctx.embed(batch)
        if status != 0:
            raise EmbedderError(f"llama.cpp embedding call failed ({status})")
        for seq_id, (job, i) in enumerate(taken):
            vec = self.ctx.sequence_embedding(seq_id)
            norm = float(np.linalg.norm(vec)) if self.normalize else 0.0
            assert job.vectors is not None
            job.vectors[i] = vec / norm if norm > 0 else vec
            job.remaining -= 1
            if job.remaining == 0 and not job.future.done():
                job.future.set_result(job.vectors)
        self.stats.batches += 1
        self.stats.inputs += len(taken)
        self.stats.tokens += batch.n_tokens
        self.stats.max_inputs_in_batch = max(self.stats.max_inputs_in_batch, len(taken))
