"""Shared prompt-prefix KV cache: a token-level radix tree over llama.cpp sequence ids.

A path from the root spells a token sequence whose KV is resident. Each node knows its
*holders*: the sequence ids whose KV covers the whole path from position 0 to the node's end.
All holders of a node share the same cells (kv_unified: `seq_cp` tags cells, it does not
copy), so a node's cells are counted once and are freed exactly when its last holder lets go.

Holders are running requests (their prompt is inserted chunk by chunk as it is computed, so
others can share it before it finishes) and finished requests kept as cache *entries* (their
prompt and output, for the next turn of a conversation). A request that computed tokens the
tree already has (two requests prefilling the same text at once) drops its own copy and
takes the tree's cells instead, so one prefix is held once however it was computed.

Eviction is LRU over entries; a running request's nodes are never evicted, since it holds them.
Only the engine thread uses this.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol


class KVOps(Protocol):
    def seq_copy(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None: ...
    def seq_remove(self, seq_id: int, p0: int = -1, p1: int = -1) -> None: ...


class Node:
    __slots__ = ("children", "holders", "parent", "start", "tokens")

    def __init__(self, tokens: list[int], start: int, parent: Node | None) -> None:
        self.tokens = tokens  # the edge from the parent: positions [start, start + len)
        self.start = start
        self.parent = parent
        self.children: dict[int, Node] = {}
        self.holders: set[int] = set()

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
    hits: int = 0  # lookups that reused at least one token
    hit_tokens: int = 0
    evictions: int = 0
    deduplicated_tokens: int = 0  # computed twice at once, one copy dropped


class PrefixCache:
    shares_prefixes = True  # a request takes what others computed (see no_cache.py: off)

    def __init__(self, kv: KVOps) -> None:
        self.kv = kv
        self.root = Node([], 0, None)
        self.cells = 0  # KV cells held by the tree: every node's span, counted once
        self._deepest: dict[int, Node] = {}  # seq id → deepest node it holds
        self.entries: OrderedDict[int, None] = OrderedDict()  # finished holders, LRU first
        self.stats = CacheStats()

    # --- lookups --------------------------------------------------------------------------

    def match(self, tokens: list[int], limit: int) -> int:
        """How many of the first `limit` tokens have resident KV (changes nothing)."""
        node, pos = self.root, 0
        while pos < limit:
            child = node.children.get(tokens[pos])
            if child is None:
                break
            n = common_prefix_length(child.tokens, tokens, pos, limit)
            pos += n
            if n < len(child.tokens):
                break
            node = child
        return pos

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
        node = self.root
        if length > 0:
            node = self._walk_to(tokens, length)
            self.kv.seq_copy(node.any_holder(), seq_id, 0, length)
            self._touch(node)
            self.stats.hits += 1
            self.stats.hit_tokens += length
        self._hold_path(seq_id, node)
        self._deepest[seq_id] = node

    def extend(self, seq_id: int, tokens: list[int], length: int) -> None:
        """seq_id's KV now covers tokens[:length]: put what the tree lacks into it."""
        node = self._deepest[seq_id]
        pos = node.end
        if pos >= length:
            return
        # The usual case: a sequence growing its own leaf.
        if node.holders == {seq_id} and not node.children and node is not self.root:
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
            # The tree already has these tokens: use its cells, drop our duplicates.
            self.kv.seq_remove(seq_id, pos, pos + n)
            self.kv.seq_copy(child.any_holder(), seq_id, pos, pos + n)
            self.stats.deduplicated_tokens += n
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
        """Forget seq_id entirely and drop its KV; nodes nobody else holds are freed."""
        node: Node | None = self._deepest.pop(seq_id, None)
        self.entries.pop(seq_id, None)
        while node is not None and node is not self.root:
            node.holders.discard(seq_id)
            parent = node.parent
            if not node.holders:
                assert parent is not None and not node.children
                del parent.children[node.tokens[0]]
                self.cells -= len(node.tokens)
            node = parent
        self.kv.seq_remove(seq_id, -1, -1)

    def evict_one(self) -> int | None:
        """Release the least recently used entry; returns its sequence id (now free)."""
        if not self.entries:
            return None
        seq_id = next(iter(self.entries))
        self.release(seq_id)
        self.stats.evictions += 1
        return seq_id

    def cells_held_only_by_entries(self) -> int:
        """Cells no running request holds: what the cache keeps between requests."""
        total = 0
        stack = [self.root]
        while stack:
            node = stack.pop()
            for child in node.children.values():
                if child.holders <= self.entries.keys():
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
        """Invariants, for tests: holders nest, cell count adds up, leaves are held."""
        total = 0
        stack = [self.root]
        while stack:
            node = stack.pop()
            for first, child in node.children.items():
                assert child.tokens and child.tokens[0] == first and child.parent is node
                assert child.start == node.end
                assert child.holders, "unheld node left in the tree"
                if node is not self.root:
                    assert child.holders <= node.holders
                total += len(child.tokens)
                stack.append(child)
        assert total == self.cells, (total, self.cells)
