"""The host-RAM tier of the prefix cache: KV of idle cache entries, out of the KV cells.

Every resident KV cell is attended over (masked) by every decode step, so a finished
request kept for reuse slows everyone down while it sits in the cells. Spilled here, its
KV costs nothing until a request matches it again; then it is copied back into cells
(llama_state_seq_set_data): measured on 2 CPU cores (AMD EPYC), ~1.6 ms to copy out and
~1.1 ms to copy back 1,000 tokens of SmolLM2-135M (22 MB), against ~1.5 s to prefill them
again.

An entry is what a sequence alone held when it was spilled: its whole state (positions from
0), or, when the head of its path was still shared with other sequences or already in RAM
(a system prompt many conversations start with, the earlier turns of a conversation), only
the run after that head, copied out through a scratch sequence. So RAM holds a shared
prefix once, and a restore may gather a path from several entries. The store keeps entries
LRU within a byte budget; the prefix tree records which entries cover each node and where
each entry's path ends (prefix_cache.py), so a lookup walks one tree for both tiers; this
module knows no tree.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass, field

_ids = itertools.count(1)


@dataclass(eq=False)
class HostEntry:
    """KV of positions [start, len(tokens)) of the path `tokens` spells: a whole
    sequence's state (start 0), or the part of it nothing else held when it was spilled
    (the path above `start` was shared or stored already)."""

    tokens: list[int]  # the path, from position 0
    data: bytes | bytearray  # llama_state_seq_get_data of a sequence holding that part
    start: int = 0
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens) - self.start


@dataclass
class TierStats:
    spills: int = 0  # entries moved from the cells to RAM
    spilled_tokens: int = 0
    spill_seconds: float = 0.0
    # Entries dropped instead of spilled because copying them out costs more than
    # computing them again (a GPU, cells scattered by batching: see SpillPolicy).
    not_worth_spilling: int = 0
    restores: int = 0  # entries copied back into cells for a request
    restored_tokens: int = 0
    restore_seconds: float = 0.0
    # Entries the RAM budget pushed out, and those that went with them (entries that
    # continue a path whose head went).
    dropped: int = 0


class SpillPolicy:
    """Whether copying an entry to RAM pays: its copy out and back (measured, per token)
    must cost less than computing its tokens again (measured prefill, per token).

    On 2 CPU cores a spill costs ~2 us a token against ~1.5 ms of prefill, so everything is
    kept. On an H200 llama_state_seq_get_data copies every run of contiguous cells of every
    layer separately, and batching scatters a sequence's cells (one per decode step), so a
    250-token entry took ~90 ms to copy out while prefilling it again takes a few ms: there
    it is dropped instead. Until both costs have been seen, entries are spilled."""

    # Weight of a new measurement in the running averages.
    ALPHA = 0.2

    def __init__(self) -> None:
        self.spill_per_token: float | None = None
        self.prefill_per_token: float | None = None

    def observe_spill(self, seconds: float, tokens: int) -> None:
        self.spill_per_token = self._update(self.spill_per_token, seconds / max(tokens, 1))

    def observe_prefill(self, seconds: float, tokens: int) -> None:
        self.prefill_per_token = self._update(self.prefill_per_token, seconds / max(tokens, 1))

    def worth_spilling(self) -> bool:
        if self.spill_per_token is None or self.prefill_per_token is None:
            return True
        # A restore copies the same bytes back: count the way out and the way back.
        return 2 * self.spill_per_token < self.prefill_per_token

    def _update(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.ALPHA) * old + self.ALPHA * new


class HostStore:
    """Entries LRU within `budget` bytes (0: the tier is off and keeps nothing)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.policy = SpillPolicy()
        self.bytes = 0
        self.entries: OrderedDict[int, HostEntry] = OrderedDict()
        self.stats = TierStats()
        self._clock = time.perf_counter

    def fits(self, size: int) -> bool:
        return 0 < size <= self.budget

    def add(self, entry: HostEntry) -> list[HostEntry]:
        """Keep entry; returns the least recently used ones dropped to stay in budget."""
        self.entries[entry.id] = entry
        self.bytes += entry.size
        dropped = []
        while self.bytes > self.budget and self.entries:
            _, oldest = self.entries.popitem(last=False)
            self.bytes -= oldest.size
            dropped.append(oldest)
            self.stats.dropped += 1
        return dropped

    def get(self, entry_id: int) -> HostEntry:
        entry = self.entries[entry_id]
        self.entries.move_to_end(entry_id)
        return entry

    def remove(self, entry: HostEntry) -> None:
        if self.entries.pop(entry.id, None) is not None:
            self.bytes -= entry.size

    def clear(self) -> list[HostEntry]:
        gone = list(self.entries.values())
        self.entries.clear()
        self.bytes = 0
        return gone
