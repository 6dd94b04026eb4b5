"""Which sequences run, and what each step's single llama_decode holds.

Pure bookkeeping over Sequence objects (no llama.cpp calls), so the policy is easy to read
and to test:
- admission: FIFO from the waiting queue while a sequence id is free and the KV cache can
  hold the whole prompt next to what running sequences already hold;
- each step: one token for every decoding sequence first (streams never stall behind a long
  prompt), then prompt chunks, oldest request first, within the token budget;
- when the KV cache cannot take the next step, the newest sequence is preempted: its cells
  are freed and it goes back to the head of the queue to be recomputed later (vLLM's
  recompute preemption), so no request fails because others filled the cache.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from server.engine.sequence import Sequence


@dataclass(slots=True)
class Chunk:
    seq: Sequence
    n_tokens: int


@dataclass
class StepPlan:
    chunks: list[Chunk] = field(default_factory=list)
    admitted: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(c.n_tokens for c in self.chunks)


class Scheduler:
    def __init__(
        self,
        max_running: int,
        token_budget: int,
        n_cells: int,
        release_kv: Callable[[int], None],
    ) -> None:
        """release_kv(seq_id) must drop that sequence's cells; it is called whenever an id
        goes back to the pool, so a freed id never carries stale KV."""
        self.max_running = max_running
        self._release_kv = release_kv
        self.token_budget = token_budget
        self.n_cells = n_cells
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order
        self._free_seq_ids: list[int] = list(range(max_running - 1, -1, -1))

    @property
    def cells_used(self) -> int:
        return sum(s.n_computed for s in self.running)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Forget a finished or cancelled sequence and free its KV."""
        if seq.seq_id is not None:
            self.running.remove(seq)
            self._free_seq_id(seq)
        else:
            self.waiting.remove(seq)

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        self._admit(plan)
        self._make_room_for_decodes(plan)
        budget = self.token_budget
        cells_free = self.n_cells - self.cells_used
        decoding = [s for s in self.running if not s.is_prefilling]
        for seq in decoding[:budget]:
            plan.chunks.append(Chunk(seq, 1))
        budget -= len(plan.chunks)
        cells_free -= len(plan.chunks)
        for seq in self.running:
            if budget <= 0 or cells_free <= 0:
                break
            if seq.is_prefilling:
                n = min(seq.n_uncomputed, budget, cells_free)
                plan.chunks.append(Chunk(seq, n))
                budget -= n
                cells_free -= n
        return plan

    def preempt_newest(self) -> Sequence | None:
        """Take the most recently admitted sequence off the context (KV freed by the caller)."""
        if not self.running:
            return None
        seq = self.running.pop()
        self._free_seq_id(seq)
        seq.n_computed = 0
        self.waiting.appendleft(seq)
        return seq

    def _free_seq_id(self, seq: Sequence) -> None:
        assert seq.seq_id is not None
        self._release_kv(seq.seq_id)
        self._free_seq_ids.append(seq.seq_id)
        seq.seq_id = None

    def _admit(self, plan: StepPlan) -> None:
        # Cells the running sequences will hold once their pending tokens are computed.
        committed = sum(len(s.tokens) for s in self.running)
        while self.waiting and self._free_seq_ids and len(self.running) < self.max_running:
            seq = self.waiting[0]
            # +1: room for the first generated token, so a fresh request can make progress.
            if self.running and committed + len(seq.tokens) + 1 > self.n_cells:
                break
            self.waiting.popleft()
            seq.seq_id = self._free_seq_ids.pop()
            self.running.append(seq)
            committed += len(seq.tokens)
            plan.admitted.append(seq)

    def _make_room_for_decodes(self, plan: StepPlan) -> None:
        while len(self.running) > 1:
            n_decoding = sum(1 for s in self.running if not s.is_prefilling)
            if self.n_cells - self.cells_used >= n_decoding:
                return
            seq = self.preempt_newest()
            if seq is not None:
                plan.preempted.append(seq)
