"""Which sequences run, and what each step's single llama_decode holds.

Bookkeeping over Sequence objects and the prefix cache; the only llama.cpp calls are the
KV operations the cache makes through its KVOps. The policy:
- admission: from the waiting queue while a sequence id is free and the KV cache can hold
  the uncached part of the prompt; a request first takes the longest cached prefix of its
  prompt (shared cells, no copy) and only prefills the rest;
- cache-aware: a waiting request whose prompt shares a not-yet-cached prefix with a request
  that is prefilling right now waits until that prefix is in the cache, rather than
  computing the same tokens a second time (SGLang's longest-prefix-first idea);
- each step: one token for every decoding sequence first (streams never stall behind a long
  prompt), then prompt chunks, oldest request first, within the token budget;
- room: finished requests kept in the cache are evicted LRU first; when the running ones
  alone overflow the cells, the newest is preempted: its cells are freed and it goes back
  to the head of the queue to be recomputed (vLLM's recompute preemption), so no request
  fails because others filled the cache.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from server.engine.drafting import StepCost, plan_drafts
from server.engine.no_cache import NoCache
from server.engine.prefix_cache import (
    MIN_RESTORE_TOKENS,
    PrefixCache,
    StoredMatch,
    common_prefix_length,
)
from server.engine.sequence import Sequence

# A waiting request defers to a prefilling one only for a shared prefix at least this long:
# below it, computing the few tokens twice costs less than waiting a step.
DEFER_MIN_TOKENS = 32
# ggml's CPU flash attention goes from one batch row at a time to tiles of this many rows.
FLASH_ATTN_TILE_ROWS = 64


@dataclass(slots=True)
class Chunk:
    seq: Sequence
    n_tokens: int
    # Draft tokens to verify after a decode chunk's one token (prompt lookup).
    draft: list[int] = field(default_factory=list)


@dataclass
class StepPlan:
    chunks: list[Chunk] = field(default_factory=list)
    admitted: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(c.n_tokens + len(c.draft) for c in self.chunks)

    def calls(self, separate_prompts: bool) -> list[StepPlan]:
        """The plan as llama_decode calls: one, or with separate_prompts, the decoding
        sequences (and their drafts) first and the prompt chunks after, when the batch
        would reach flash attention's tile size. On a CPU, ggml computes attention for 64
        batch rows at a time over every 64-cell block of KV any of those rows reads, so a
        few decode rows in a tile with prompt rows drag every decoding sequence's cells
        through it; apart, the decodes (under 64 rows) take the row-by-row path, which
        skips every cell a row does not read."""
        if not separate_prompts or self.n_tokens < FLASH_ATTN_TILE_ROWS:
            return [self]
        decodes = [c for c in self.chunks if not c.seq.is_prefilling]
        prompts = [c for c in self.chunks if c.seq.is_prefilling]
        if not decodes or not prompts:
            return [self]
        return [StepPlan(decodes), StepPlan(prompts, self.admitted, self.preempted)]


class Scheduler:
    def __init__(
        self,
        max_running: int,
        token_budget: int,
        n_cells: int,
        cache: PrefixCache | NoCache,
        cache_entries: int = 0,
        cache_cells: int | None = None,
        max_draft: int = 0,
        max_draft_alone: int = 0,
        separate_prompts: bool = False,
    ) -> None:
        """cache_entries: sequence ids beyond max_running that finished requests may keep
        holding; cache_cells: most cells those entries may hold between requests."""
        self.max_running = max_running
        self.max_draft = max_draft  # draft tokens per decoding sequence and step (0: none)
        # ... for a sequence decoding alone whose last draft was accepted whole (at least
        # max_draft). Measured here (2 CPU cores, engines stepped in turn), 16 against 8:
        # alone, quoting answers came out 1.15x faster, code edits and answers sampled at
        # temperature 0.7 level; without the whole-acceptance condition those two were
        # 0.97x, since the planner then bought long drafts on thin evidence. 16 for every
        # sequence was level beside one other and 0.91x and 0.82x beside three and five: a
        # long draft widens every step for one sequence's sake, and the planner, choosing
        # among many candidates, errs on the hopeful side.
        self.max_draft_alone = max(max_draft_alone, max_draft) if max_draft else 0
        # Steps run their decodes and prompt chunks as separate calls (StepPlan.calls; the
        # engine reads it here, and drafts are priced by it).
        self.separate_prompts = separate_prompts
        # What a step costs by its size, as measured by the engine (drafting's yardstick).
        self.step_cost = StepCost()
        self.token_budget = token_budget
        self.n_cells = n_cells
        self.cache = cache
        self.cache_cells = n_cells if cache_cells is None else cache_cells
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order
        self.preemptions = 0
        n_ids = max_running + cache_entries
        self.n_sequence_ids = n_ids
        self._free_seq_ids: list[int] = list(range(n_ids - 1, -1, -1))

    @property
    def cells_used(self) -> int:
        """Distinct KV cells in use: the tree's, plus what running sequences computed and
        the tree does not have yet (their private tails)."""
        return self.cache.cells + sum(s.n_computed - s.n_in_tree for s in self.running)

    @property
    def free_sequence_ids(self) -> int:
        return len(self._free_seq_ids)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """A sequence finished or was cancelled: keep its KV as a cache entry or free it."""
        if seq.seq_id is None:
            self.waiting.remove(seq)
            return
        self.running.remove(seq)
        self._free_seq_ids.extend(self.cache.finish(seq.seq_id, seq.tokens, seq.n_computed))
        seq.seq_id = None
        self._trim_cache()

    def forget(self, seq: Sequence) -> None:
        """Last resort when `remove` failed: stop scheduling the sequence. Its sequence id
        is not reused, since the cache's record of its cells can no longer be trusted."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        if seq in self.running:
            self.running.remove(seq)

    def on_computed(self, seq: Sequence) -> None:
        """After a step: prompt tokens just computed go into the tree for others to share."""
        if seq.n_in_tree < seq.n_prompt:
            self.cache.extend(seq.seq_id, seq.tokens, min(seq.n_computed, seq.n_prompt))
            seq.n_in_tree = self.cache.held_length(seq.seq_id)

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
        if self.max_draft:
            self._add_drafts(plan, budget, cells_free)
        return plan

    def _add_drafts(self, plan: StepPlan, budget: int, cells_free: int) -> None:
        """Draft tokens for decoding sequences, from what the step's budget and the free
        cells have left after every decode and prompt chunk (drafts never delay those),
        as many as make the step yield most (drafting.plan_drafts). A proposal left out
        is watched: the output will tell whether it would have been accepted."""
        chunks = [c for c in plan.chunks if c.seq.drafter is not None and not c.seq.is_prefilling]
        if not chunks:
            return
        n_decoding = sum(1 for c in plan.chunks if not c.seq.is_prefilling)
        proposals = []
        for chunk in chunks:
            stats = chunk.seq.draft_stats
            stats.settle(chunk.seq.tokens)
            alone = n_decoding == 1 and stats.copying
            proposals.append(chunk.seq.propose(self.max_draft_alone if alone else self.max_draft))
        # Separated, the drafts ride in a call of decodes alone, which the table prices.
        n_prompt = 0 if self.separate_prompts else plan.n_tokens - n_decoding
        lengths = plan_drafts(
            [c.seq.draft_stats.reach(len(p)) for c, p in zip(chunks, proposals, strict=True)],
            self.step_cost,
            n_decoding + n_prompt,
            n_decoding,
            min(budget, cells_free),
            n_prompt=n_prompt,
        )
        for chunk, proposal, k in zip(chunks, proposals, lengths, strict=True):
            stats = chunk.seq.draft_stats
            if k:
                chunk.draft = proposal[:k]
                stats.unwatch()
            else:
                stats.watch(proposal, len(chunk.seq.tokens))

    def cache_entries(self) -> list[tuple[int, list[int]]]:
        """(sequence id, tokens it holds KV for) of every cache entry, newest first."""
        return [(s, self.cache.path_tokens(s)) for s in reversed(list(self.cache.entries))]

    def restore_entry(self, load: Callable[[int], list[int] | None]) -> bool:
        """Give a free sequence id to `load`, which puts saved KV under it and returns the
        tokens it holds (None: it could not); they become a cache entry. False when no id
        was free or the load failed."""
        if not self._free_seq_ids:
            return False
        seq_id = self._free_seq_ids.pop()
        tokens = load(seq_id)
        if not tokens:
            self.cache.kv.seq_remove(seq_id, -1, -1)
            self._free_seq_ids.append(seq_id)
            return False
        self.cache.acquire(seq_id, tokens, 0)
        self.cache.extend(seq_id, tokens, len(tokens))
        self._free_seq_ids.extend(self.cache.finish(seq_id, tokens, len(tokens)))
        self._trim_cache()
        return True

    def make_room(self) -> bool:
        """Free some cells: an idle cache entry first, else the newest running sequence.
        False when nothing can go (a lone running sequence)."""
        if self._evict_one():
            return True
        return len(self.running) > 1 and self.preempt_newest() is not None

    def preempt_newest(self) -> Sequence | None:
        """Take the most recently admitted sequence off the context, to be recomputed."""
        if not self.running:
            return None
        seq = self.running.pop()
        self._release(seq)
        self.waiting.appendleft(seq)
        self.preemptions += 1
        return seq

    # --- admission ------------------------------------------------------------------------

    def _admit(self, plan: StepPlan) -> None:
        i = 0
        while i < len(self.waiting) and len(self.running) < self.max_running:
            seq = self.waiting[i]
            # The last token is always computed: its logits choose the first new token.
            if self._should_defer(seq, self.cache.match(seq.tokens, len(seq.tokens) - 1)):
                i += 1
                continue
            if not self._free_seq_ids and not self._evict_one():
                break
            seq_id = self._free_seq_ids.pop()
            cached = self._take_prefix(seq, seq_id)
            seq.seq_id = seq_id
            seq.n_computed = seq.n_in_tree = cached
            if seq.n_cached is None:
                seq.n_cached = cached
            # Room for the rest of the prompt and a first token; evict entries for it.
            need = len(seq.tokens) - cached + 1
            while self._cells_free_after_running() < need and self._evict_one():
                pass
            if self.running and self._cells_free_after_running() < need:
                self._release(seq)  # wait for running requests to finish
                break
            del self.waiting[i]
            self.running.append(seq)
            plan.admitted.append(seq)

    def _take_prefix(self, seq: Sequence, seq_id: int) -> int:
        """Give seq_id the longest cached prefix of seq's prompt: shared from resident cells,
        or restored from host RAM when that saves enough prefill. Returns its length."""
        if seq.wants_prompt_logprobs:
            self.cache.acquire(seq_id, seq.tokens, 0)
            return 0
        # The last token is always computed: its logits choose the first new token.
        limit = len(seq.tokens) - 1
        cached, found = self._lookup(seq.tokens, limit)
        if found is not None and found.length - cached >= MIN_RESTORE_TOKENS:
            # Restoring takes cells for each stored entry whole before it is cut to the
            # prompt: make room from idle entries, or compute it after all.
            room = found.cells_needed
            while self._cells_free_after_running() < room and self._evict_one():
                pass
            # Evicting may have moved what matched from the cells to RAM, or out of RAM.
            cached, found = self._lookup(seq.tokens, limit)
            if (
                found is not None
                and found.length - cached >= MIN_RESTORE_TOKENS
                and self._cells_free_after_running() >= found.cells_needed
                and self.cache.restore(seq_id, seq.tokens, found)
            ):
                return found.length
        self.cache.acquire(seq_id, seq.tokens, cached)
        return cached

    def _lookup(self, tokens: list[int], limit: int) -> tuple[int, StoredMatch | None]:
        """How much of the prompt the cells hold, and what RAM holds past that."""
        found = self.cache.match_stored(tokens, limit)
        return (found.resident if found is not None else self.cache.match(tokens, limit)), found

    def _cells_free_after_running(self) -> int:
        """Cells left once every running sequence has computed what it has pending."""
        pending = sum(s.n_uncomputed for s in self.running)
        return self.n_cells - self.cells_used - pending

    def _should_defer(self, seq: Sequence, cached: int) -> bool:
        if not self.cache.shares_prefixes or seq.wants_prompt_logprobs:
            return False
        for other in self.running:
            if other.n_in_tree < other.n_prompt:  # still prefilling its prompt
                shared = common_prefix_length(seq.tokens, other.tokens, 0, other.n_prompt)
                shared = min(shared, len(seq.tokens) - 1)
                if shared - cached >= DEFER_MIN_TOKENS:
                    return True
        return False

    # --- room -----------------------------------------------------------------------------

    def _make_room_for_decodes(self, plan: StepPlan) -> None:
        while True:
            n_decoding = sum(1 for s in self.running if not s.is_prefilling)
            if self.n_cells - self.cells_used >= n_decoding:
                return
            if self._evict_one():
                continue
            if len(self.running) <= 1:
                return
            seq = self.preempt_newest()
            if seq is not None:
                plan.preempted.append(seq)

    def _trim_cache(self) -> None:
        """Keep what finished requests hold within cache_cells (running ones may use more)."""
        while self.cache.entries and self.cache.cells_held_only_by_entries() > self.cache_cells:
            self._evict_one()

    def _evict_one(self) -> bool:
        seq_id = self.cache.evict_one()
        if seq_id is None:
            return False
        self._free_seq_ids.append(seq_id)
        return True

    def _release(self, seq: Sequence) -> None:
        """Drop a sequence's KV and give its id back (it stays a Sequence, to run again)."""
        assert seq.seq_id is not None
        self.cache.release(seq.seq_id)
        self._free_seq_ids.append(seq.seq_id)
        seq.seq_id = None
        seq.n_computed = seq.n_in_tree = 0
