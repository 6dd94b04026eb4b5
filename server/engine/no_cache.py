"""The prefix cache switched off: the same interface as PrefixCache, holding nothing.

Every request computes its whole prompt and frees its cells when it ends. Kept as its own
small class (as mini-sglang's naive cache is) rather than a flag checked in the tree, the
scheduler and the engine: they call the cache the same way either way.
"""

from __future__ import annotations

from collections import OrderedDict

from server.engine.host_kv import HostStore
from server.engine.prefix_cache import CacheStats, KVOps, StoredMatch


class NoCache:
    shares_prefixes = False  # nothing computed by one request is ever given to another
    cells = 0

    def __init__(self, kv: KVOps) -> None:
        self.kv = kv
        self.host = HostStore(0)  # no host tier either
        self.entries: OrderedDict[int, None] = OrderedDict()  # always empty
        self.stats = CacheStats()

    def match(self, tokens: list[int], limit: int) -> int:
        return 0

    def match_stored(self, tokens: list[int], limit: int) -> StoredMatch | None:
        return None

    def restore(self, seq_id: int, tokens: list[int], found: StoredMatch) -> bool:
        return False

    def stored_entries(self) -> list:  # type: ignore[type-arg]
        return []

    def adopt_stored(self, tokens: list[int], data: bytes, start: int = 0) -> bool:
        return False

    def acquire(self, seq_id: int, tokens: list[int], length: int) -> None:
        self.stats.lookups += 1

    def extend(self, seq_id: int, tokens: list[int], length: int) -> None:
        pass

    def finish(self, seq_id: int, tokens: list[int], length: int) -> list[int]:
        self.release(seq_id)
        return [seq_id]

    def release(self, seq_id: int) -> None:
        self.kv.seq_remove(seq_id, -1, -1)

    def evict_one(self) -> int | None:
        return None

    def cells_held_only_by_entries(self) -> int:
        return 0

    def path_tokens(self, seq_id: int) -> list[int]:
        return []

    def held_length(self, seq_id: int) -> int:
        return 0

    def check(self) -> None:
        pass
