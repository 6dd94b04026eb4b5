"""Shared prompt-prefix KV cache: a token-level radix tree over llama.cpp sequence ids, and
over a host-RAM tier.

A path from the root spells a token sequence whose KV Hearth has somewhere. Each node knows
its *holders*: the sequence ids whose KV cells cover the whole path from position 0 to the
node's end (the node is *resident*). All holders of a node share the same cells
(kv_unified: `seq_cp` tags cells, it does not copy), so a node's cells are counted once and
are freed exactly when its last holder lets go. A node may also be *stored*: covered by
host-RAM entries (host_kv.py) holding its KV; an entry covers a run of nodes ending at its
own end node and starting at position 0 or where its sequence's path was shared or stored
already. A node stays in the tree while it is resident or stored; one that is neither goes,
with the entries below it (the head of their path is gone).

Holders are running requests (their prompt is inserted chunk by chunk as it is computed, so
others can share it before it finishes) and finished requests kept as cache *entries* (their
prompt and output, for the next turn of a conversation). A request that computed tokens the
tree already has in cells (two requests prefilling the same text at once) drops its own
copy and takes the tree's cells instead, so one prefix is held once however it was computed.

Eviction is LRU over entries: with a host tier, an evicted entry is *spilled* (the KV only it
holds copied to RAM, its cells freed) rather than dropped, and a later request whose prompt
runs further along stored nodes than along resident cells gets them *restored*: each entry
on the way is loaded into a scratch sequence and the run the prompt needs shared into the
request's sequence (a copy, milliseconds, instead of computing it again, seconds). A
running request's nodes are never evicted, since it holds them. Only the engine thread uses
this.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from server.engine.host_kv import HostEntry, HostStore

# A restore must save at least this many tokens of prefill over what the cells already
# hold to be worth it (restoring costs ~1/200 of computing; below this the bookkeeping
# is not worth a sequence's whole state copy).
MIN_RESTORE_TOKENS = 16


class KVOps(Protocol):
    def seq_copy(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None: ...
    def seq_remove(self, seq_id: int, p0: int = -1, p1: int = -1) -> None: ...
    def save_state(self, seq_id: int) -> bytearray | None: ...
    def load_state(self, seq_id: int, data: bytes | bytearray) -> bool: ...


class Node:
    __slots__ = ("children", "holders", "parent", "start", "stored", "tokens")

    def __init__(self, tokens: list[int], start: int, parent: Node | None) -> None:
        self.tokens = tokens  # the edge from the parent: positions [start, start + len)
        self.start = start
        self.parent = parent
        self.children: dict[int, Node] = {}
        self.holders: set[int] = set()  # sequence ids whose cells cover the path
        self.stored: set[int] = set()  # host entries whose KV covers the path

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)

    def split(self, at: int) -> Node:
        """Cut this node at position `at`; returns the new upper part (self stays below)."""
        k = at - self.start
        assert 0 < k < len(self.tokens)
        parent = self.parent
        assert parent is not None
        upper = Node(self.tokens[:k], self.start, parent)
        upper.holders = set(self.holders)
        upper.stored = set(self.stored)
        parent.children[upper.tokens[0]] = upper
        self.tokens = self.tokens[k:]
        self.start = at
        self.parent = upper
        upper.children[self.tokens[0]] = self
        return upper

    def any_holder(self) -> int:
        return next(iter(self.holders))


def common_prefix_length(
    a: list[int], b: list[int], b_start: int = 0, b_end: int | None = None
) -> int:
    """Length of the common prefix of a and b[b_start:b_end], compared a block at a time
    (list slices compare in C, much faster than a Python loop over tokens)."""
    n = min(len(a), (len(b) if b_end is None else b_end) - b_start)
    i = 0
    block = 256
    while i < n:
        k = min(block, n - i)
        if a[i : i + k] == b[b_start + i : b_start + i + k]:
            i += k
            continue
        while a[i] == b[b_start + i]:
            i += 1
        return i
    return max(n, 0)


@dataclass
class CacheStats:
    lookups: int = 0
    hits: int = 0  # lookups that reused at least one token (from cells or RAM)
    hit_tokens: int = 0
    ram_hits: int = 0  # of those, served by restoring an entry from host RAM
    ram_hit_tokens: int = 0
    evictions: int = 0  # entries taken out of the cells (spilled or dropped)
    deduplicated_tokens: int = 0  # computed twice at once, one copy dropped


@dataclass(frozen=True)
class StoredRun:
    """Positions [start, end) of a prompt's path, to be copied back from a host entry."""

    entry: HostEntry
    start: int
    end: int


@dataclass(frozen=True)
class StoredMatch:
    """How far a prompt runs along paths whose KV is in the cells or in RAM, where the
    cells end (`resident`), and the runs past that which host entries hold."""

    length: int
    resident: int
    runs: tuple[StoredRun, ...]

    @property
    def cells_needed(self) -> int:
        """Cells a restore takes at its peak: the runs shared in so far, and the entry
        being loaded whole before its run is cut out of it."""
        peak, done = 0, 0
        for run in self.runs:
            peak = max(peak, done + run.entry.n_tokens)
            done += run.end - run.start
        return max(peak, done)


class PrefixCache:
    shares_prefixes = True  # a request takes what others computed (see no_cache.py: off)

    def __init__(
        self, kv: KVOps, host: HostStore | None = None, scratch_seq_id: int | None = None
    ) -> None:
        """scratch_seq_id: a sequence id nobody else uses, where host entries are loaded and
        cut out of (needed by the host tier)."""
        self.kv = kv
        self.host = host if host is not None else HostStore(0)
        self.scratch = scratch_seq_id
        self.root = Node([], 0, None)
        self.cells = 0  # KV cells held by the tree: every resident node's span, once
        self._deepest: dict[int, Node] = {}  # seq id → deepest node it holds
        self._stored_at: dict[int, Node] = {}  # host entry id → deepest node it covers
        self.entries: OrderedDict[int, None] = OrderedDict()  # finished holders, LRU first
        self.stats = CacheStats()

    # --- lookups --------------------------------------------------------------------------

    def match(self, tokens: list[int], limit: int) -> int:
        """How many of the first `limit` tokens have resident KV (changes nothing)."""
        return self._walk(tokens, limit, resident=True)[0]

    def match_stored(self, tokens: list[int], limit: int) -> StoredMatch | None:
        """How far the first `limit` tokens run along resident or stored nodes, and the
        host entries that cover the part past the cells (changes nothing); None when RAM
        adds nothing to what the cells have."""
        resident = self.match(tokens, limit)
        length, node = self._walk(tokens, limit, resident=False)
        if length <= resident or node is None:
            return None
        # From the deepest node up: an entry reaching furthest up covers a run of nodes;
        # the node just above that run needs another entry, until the cells take over.
        runs: list[StoredRun] = []
        end = length
        n: Node | None = node
        while n is not None and n is not self.root and n.end > resident:
            if not n.stored:  # cannot happen (past the cells a node is stored); compute
                return None
            entry = min((self.host.entries[e] for e in n.stored), key=lambda e: e.start)
            start = max(entry.start, resident)
            runs.append(StoredRun(entry, start, end))
            while n is not None and n is not self.root and n.start >= start:
                n = n.parent
            end = start
        return StoredMatch(length, resident, tuple(runs))

    def _walk(self, tokens: list[int], limit: int, resident: bool) -> tuple[int, Node | None]:
        """How far tokens[:limit] runs along resident nodes (or nodes resident or stored),
        and the node where it ends (None: the root)."""
        node, pos, last = self.root, 0, None
        while pos < limit:
            child = node.children.get(tokens[pos])
            if child is None or not (child.holders or (not resident and child.stored)):
                break
            n = common_prefix_length(child.tokens, tokens, pos, limit)
            pos += n
            last = child
            if n < len(child.tokens):
                break
            node = child
        return pos, last

    def _walk_to(self, tokens: list[int], length: int) -> Node:
        """The node ending exactly at `length` along tokens (split if needed)."""
        node, pos = self.root, 0
        while pos < length:
            child = node.children[tokens[pos]]
            if child.end > length:
                return child.split(length)
            node, pos = child, child.end
        return node

    # --- holding --------------------------------------------------------------------------

    def acquire(self, seq_id: int, tokens: list[int], length: int) -> None:
        """Give a fresh sequence the resident KV of tokens[:length] (length from match())."""
        self.stats.lookups += 1
        if length > 0:
            self.stats.hits += 1
            self.stats.hit_tokens += length
        self._share_resident(seq_id, tokens, length)

    def _share_resident(self, seq_id: int, tokens: list[int], length: int) -> None:
        """seq_id takes the cells of tokens[:length] (resident) and holds their path."""
        node = self.root
        if length > 0:
            node = self._walk_to(tokens, length)
            self.kv.seq_copy(node.any_holder(), seq_id, 0, length)
            self._touch(node)
        self._hold_path(seq_id, node)
        self._deepest[seq_id] = node

    def restore(self, seq_id: int, tokens: list[int], found: StoredMatch) -> bool:
        """Give a fresh sequence tokens[:found.length]: each host entry's state is loaded
        into the scratch sequence and the part the prompt needs is shared into seq_id
        (seq_cp), then the path's resident part is shared as usual. False (and nothing
        held) when llama.cpp could not load an entry."""
        started = time.perf_counter()
        assert self.scratch is not None
        if any(run.entry.id not in self.host.entries for run in found.runs):
            return False  # making room for it pushed one out of RAM: compute it instead
        for run in found.runs:
            entry = self.host.get(run.entry.id)
            loaded = self.kv.load_state(self.scratch, entry.data)
            if loaded:
                self.kv.seq_copy(self.scratch, seq_id, run.start, run.end)
            self.kv.seq_remove(self.scratch, -1, -1)
            if not loaded:
                self.kv.seq_remove(seq_id, -1, -1)
                return False
        restored = found.length - found.resident
        self.stats.lookups += 1
        self.stats.hits += 1
        self.stats.hit_tokens += found.length
        self.stats.ram_hits += 1
        self.stats.ram_hit_tokens += restored
        self._share_resident(seq_id, tokens, found.resident)
        self.extend(seq_id, tokens, found.length)
        tier = self.host.stats
        tier.restores += 1
        tier.restored_tokens += restored
        tier.restore_seconds += time.perf_counter() - started
        return True

    def extend(self, seq_id: int, tokens: list[int], length: int) -> None:
        """seq_id's KV now covers tokens[:length]: put what the tree lacks into it."""
        node = self._deepest[seq_id]
        pos = node.end
        if pos >= length:
            return
        # The usual case: a sequence growing its own leaf.
        if (
            node.holders == {seq_id}
            and not node.stored
            and not node.children
            and node is not self.root
        ):
            node.tokens.extend(tokens[pos:length])
            self.cells += length - pos
            return
        while pos < length:
            child = node.children.get(tokens[pos])
            if child is None:
                leaf = Node(tokens[pos:length], pos, node)
                leaf.holders.add(seq_id)
                node.children[leaf.tokens[0]] = leaf
                self.cells += length - pos
                node = leaf
                break
            n = common_prefix_length(child.tokens, tokens, pos, length)
            if n < len(child.tokens):
                child = child.split(pos + n)
            if child.holders:
                # The tree already has these tokens in cells: use them, drop our copy.
                self.kv.seq_remove(seq_id, pos, pos + n)
                self.kv.seq_copy(child.any_holder(), seq_id, pos, pos + n)
                self.stats.deduplicated_tokens += n
            else:
                self.cells += n  # a stored-only node: our cells make it resident
            child.holders.add(seq_id)
            node, pos = child, pos + n
        self._deepest[seq_id] = node

    def finish(self, seq_id: int, tokens: list[int], length: int) -> list[int]:
        """A request ended with KV for tokens[:length]. Keep it as an entry when it holds
        something nobody else does; otherwise let go. Returns the sequence ids now free."""
        self.extend(seq_id, tokens, length)
        node = self._deepest[seq_id]
        if node is not self.root and node.holders == {seq_id}:
            self.entries[seq_id] = None
            return self._release_subsumed(node)
        self.release(seq_id)
        return [seq_id]

    def _release_subsumed(self, node: Node) -> list[int]:
        """Entries whose whole path lies on node's path keep nothing that node's holder does
        not: release them, so their sequence ids are free again (no cells are freed)."""
        released = []
        n: Node | None = node.parent
        while n is not None and n is not self.root:
            for holder in list(n.holders):
                if holder in self.entries and self._deepest[holder] is n:
                    self.release(holder)
                    released.append(holder)
            n = n.parent
        return released

    def release(self, seq_id: int) -> None:
        """Forget seq_id entirely and drop its KV; a node neither held nor stored goes. If
        host entries hang below a node that would go (a conversation's turns below a
        system prompt nobody else holds now), that node is copied to RAM first, so they
        stay reachable."""
        lost = self._lost_run(seq_id)
        if lost is not None and self._has_dependents(*lost):
            self.spill(seq_id)
        node: Node | None = self._deepest.pop(seq_id, None)
        self.entries.pop(seq_id, None)
        while node is not None and node is not self.root:
            node.holders.discard(seq_id)
            parent = node.parent
            if not node.holders:  # seq_id was its last holder: its cells are freed
                self.cells -= len(node.tokens)
                if not node.stored:  # nor in RAM: it goes, with what hangs below it
                    self._prune(node)
            node = parent
        self.kv.seq_remove(seq_id, -1, -1)

    def evict_one(self) -> int | None:
        """Take the least recently used entry out of the cells (spilled to RAM when the
        host tier takes it, else dropped); returns its sequence id (now free)."""
        if not self.entries:
            return None
        seq_id = next(iter(self.entries))
        self.spill(seq_id)
        self.release(seq_id)
        self.stats.evictions += 1
        return seq_id

    def spill(self, seq_id: int) -> bool:
        """Copy to the host tier the KV that releasing seq_id would lose (those nodes become
        stored); True when nothing would be lost or it was copied, False when the tier is
        off, the run is too short to matter or does not fit."""
        lost = self._lost_run(seq_id)
        if lost is None:
            return True
        top, bottom = lost
        # Only what would be lost is copied: the nodes seq_id alone holds and RAM lacks.
        # The path around them is shared with others or stored already (a system prompt
        # many conversations start with is kept once). A stored node between two lost
        # ones is copied again: one entry is one run of positions.
        start, end = top.start, bottom.end
        length = end - start
        short = length < MIN_RESTORE_TOKENS and not self._has_dependents(top, bottom)
        if short or self.host.budget <= 0 or self.scratch is None:
            return False
        if not self.host.policy.worth_spilling():
            self.host.stats.not_worth_spilling += 1
            return False
        started = time.perf_counter()
        if start == 0 and bottom is self._deepest[seq_id]:
            data = self.kv.save_state(seq_id)
        else:  # the run alone, through the scratch sequence (seq_cp shares, not copies)
            self.kv.seq_copy(seq_id, self.scratch, start, end)
            data = self.kv.save_state(self.scratch)
            self.kv.seq_remove(self.scratch, -1, -1)
        if data is None or not self.host.fits(len(data)):
            return False
        entry = HostEntry(self.path_tokens(seq_id)[:end], data, start)
        self._mark_stored(bottom, entry)
        for dropped in self.host.add(entry):
            self._unstore(dropped)
        tier = self.host.stats
        seconds = time.perf_counter() - started
        tier.spills += 1
        tier.spilled_tokens += length
        tier.spill_seconds += seconds
        self.host.policy.observe_spill(seconds, length)
        return True

    def _lost_run(self, seq_id: int) -> tuple[Node, Node] | None:
        """The topmost and the deepest node on seq_id's path that releasing it would lose
        (held by it alone, in neither tier); None when it would lose nothing."""
        top = bottom = None
        n: Node | None = self._deepest.get(seq_id)
        while n is not None and n is not self.root:
            if n.holders == {seq_id} and not n.stored:
                bottom = bottom or n
                top = n
            n = n.parent
        return None if top is None or bottom is None else (top, bottom)

    def _has_dependents(self, top: Node, bottom: Node) -> bool:
        """Whether host entries hang below the nodes from top down to bottom that are
        about to be lost: they would go with them."""
        n: Node | None = bottom
        while n is not None:
            for child in n.children.values():
                if child.stored:
                    return True
            if n is top:
                return False
            n = n.parent
        return False

    def adopt_stored(self, tokens: list[int], data: bytes, start: int = 0) -> bool:
        """Put a host entry (read from disk at start-up) into the tree without cells. An
        entry that starts past position 0 is taken only where the path up to its start is
        in the tree already."""
        if len(tokens) - start < MIN_RESTORE_TOKENS or not self.host.fits(len(data)):
            return False
        if start > 0 and self._walk(tokens, start, resident=False)[0] < start:
            return False
        node, pos = self.root, 0
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                leaf = Node(list(tokens[pos:]), pos, node)
                node.children[leaf.tokens[0]] = leaf
                node, pos = leaf, len(tokens)
                break
            n = common_prefix_length(child.tokens, tokens, pos, len(tokens))
            if n < len(child.tokens):
                child = child.split(pos + n)
            node, pos = child, pos + n
        entry = HostEntry(list(tokens), data, start)
        if start > 0:
            self._walk_to(tokens, start)  # the entry's first node starts at a node's start
        self._mark_stored(node, entry)
        for dropped in self.host.add(entry):
            self._unstore(dropped)
        return True

    def _mark_stored(self, node: Node, entry: HostEntry) -> None:
        """entry covers the nodes from its start down to node (a node starts there)."""
        self._stored_at[entry.id] = node
        n: Node | None = node
        while n is not None and n is not self.root and n.start >= entry.start:
            n.stored.add(entry.id)
            n = n.parent

    def _unstore(self, entry: HostEntry) -> None:
        """Forget a host entry: its nodes lose it; those neither held nor stored go, and
        with them the entries below them (nothing leads to those any more)."""
        n: Node | None = self._stored_at.pop(entry.id, None)
        while n is not None and n is not self.root and n.start >= entry.start:
            n.stored.discard(entry.id)
            parent = n.parent
            if not n.holders and not n.stored:
                self._prune(n)
            n = parent

    def _prune(self, node: Node) -> None:
        """Take a node neither held nor stored out of the tree; host entries that start
        below it can no longer be reached (their path's head is gone): they go too."""
        parent = node.parent
        assert parent is not None
        if parent.children.get(node.tokens[0]) is not node:
            return  # already gone (pruned with an ancestor)
        del parent.children[node.tokens[0]]
        stack = list(node.children.values())
        while stack:
            n = stack.pop()
            assert not n.holders, "a held node below one nobody holds"
            for entry_id in list(n.stored):
                entry = self.host.entries.get(entry_id)
                if entry is not None:
                    self.host.remove(entry)
                    self.host.stats.dropped += 1
                self._stored_at.pop(entry_id, None)
                n.stored.discard(entry_id)
            stack.extend(n.children.values())

    def drop_stored(self) -> None:
        """Empty the host tier."""
        for entry in self.host.clear():
            self._unstore(entry)

    def stored_entries(self) -> list[HostEntry]:
        """Host entries, least recently used first."""
        return list(self.host.entries.values())

    def cells_held_only_by_entries(self) -> int:
        """Cells no running request holds: what the cache keeps between requests."""
        total = 0
        stack = [self.root]
        while stack:
            node = stack.pop()
            for child in node.children.values():
                if child.holders and child.holders <= self.entries.keys():
                    total += len(child.tokens)
                stack.append(child)
        return total

    def path_tokens(self, seq_id: int) -> list[int]:
        """The tokens seq_id holds KV for, from position 0."""
        parts = []
        node: Node | None = self._deepest[seq_id]
        while node is not None and node is not self.root:
            parts.append(node.tokens)
            node = node.parent
        return [t for part in reversed(parts) for t in part]

    def held_length(self, seq_id: int) -> int:
        return self._deepest[seq_id].end

    def _hold_path(self, seq_id: int, node: Node) -> None:
        n: Node | None = node
        while n is not None and n is not self.root:
            n.holders.add(seq_id)
            n = n.parent

    def _touch(self, node: Node) -> None:
        """Mark the entries a hit was served from as recently used."""
        for holder in node.holders:
            if holder in self.entries:
                self.entries.move_to_end(holder)

    def check(self) -> None:
        """Invariants, for tests: holders and stored entries nest, the cell count adds
        up, every node is held or stored, every stored id is a live host entry."""
        total = 0
        stack = [self.root]
        while stack:
            node = stack.pop()
            for first, child in node.children.items():
                assert child.tokens and child.tokens[0] == first and child.parent is node
                assert child.start == node.end
                assert child.holders or child.stored, "a node neither held nor stored"
                assert child.stored <= self.host.entries.keys()
                if node is not self.root:
                    assert child.holders <= node.holders
                    for entry_id in child.stored - node.stored:  # an entry starts here
                        assert self.host.entries[entry_id].start == child.start
                if child.holders:
                    total += len(child.tokens)
                stack.append(child)
        assert total == self.cells, (total, self.cells)
        assert self._stored_at.keys() == self.host.entries.keys()
        for entry_id, node in self._stored_at.items():
            entry = self.host.entries[entry_id]
            assert entry_id in node.stored and node.end == len(entry.tokens)
            n: Node | None = node
            while n is not None and n is not self.root and n.start >= entry.start:
                assert entry_id in n.stored
                n = n.parent
