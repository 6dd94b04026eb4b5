"""Prefix affinity without Ray: what a request's prompt begins with, a table of which
replica was sent which prompt beginnings, and the choice of replica from it.

The router cannot see the replicas' KV caches, so it remembers what it sent where. A
prompt is read as a chain of hashes of fixed-size blocks of its leading text (block i's
hash covers blocks 0..i, as vLLM's block hashes do), so "replica r holds the first k
blocks" is k lookups. Text, not tokens: the router has no tokenizer, and the same leading
text gives the same leading tokens on every replica. The table forgets the least recently
used blocks beyond its bound, roughly as the replicas' caches forget them.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Text beyond this is not hashed: two prompts that agree on their first 64 KiB go the
# same way whatever follows.
MAX_ROUTING_CHARS = 65_536


def _text_of(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_text_of(part) for part in content)
    if isinstance(content, dict):
        if isinstance(content.get("text"), str):
            return content["text"]
        if "content" in content:
            return _text_of(content["content"])
    return ""


def _messages_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return _text_of(messages)
    parts = []
    for m in messages:
        if isinstance(m, dict):
            parts.append(f"\x1e{m.get('role', '')}\x1f{_text_of(m.get('content'))}")
        else:
            parts.append(f"\x1e{_text_of(m)}")
    return "".join(parts)


def routing_text(path: str, body: Mapping[str, Any]) -> str:
    """What the prompt of a request to `path` begins with, as the replica will build it
    (the model, the tools and system text first, then the turns in order); "" for
    requests without a prompt."""
    head = f"{body.get('model', '')}\x1d"
    tools = body.get("tools")
    if tools:
        head += json.dumps(tools, sort_keys=True, default=str)
    if path in ("/v1/chat/completions", "/api/chat"):
        text = _messages_text(body.get("messages"))
    elif path == "/v1/messages":
        text = _text_of(body.get("system")) + _messages_text(body.get("messages"))
    elif path in ("/v1/completions", "/api/generate"):
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            prompt = prompt[0]  # several prompts: the first decides
        text = _text_of(body.get("system")) + (
            prompt if isinstance(prompt, str) else json.dumps(prompt)
        )
    elif path == "/v1/responses":
        text = _text_of(body.get("instructions")) + _messages_text(body.get("input"))
    else:
        return ""
    return (head + text)[:MAX_ROUTING_CHARS]


def block_hashes(text: str, block_chars: int) -> list[bytes]:
    """One hash per whole block of the text, each covering every block before it too (a
    trailing partial block is left out: it is not yet a shared prefix)."""
    hashes: list[bytes] = []
    previous = b""
    for start in range(0, len(text) - block_chars + 1, block_chars):
        block = text[start : start + block_chars].encode()
        previous = hashlib.blake2b(previous + block, digest_size=8).digest()
        hashes.append(previous)
    return hashes


class AffinityTable:
    """Which replicas were sent which prompt blocks, most recently used last."""

    def __init__(self, max_blocks: int = 200_000) -> None:
        self.max_blocks = max_blocks
        self._holders: OrderedDict[bytes, set[str]] = OrderedDict()
        self._held: dict[str, int] = {}  # blocks per replica

    def match(self, hashes: Sequence[bytes], replicas: Iterable[str]) -> dict[str, int]:
        """For each replica, how many of the leading blocks it was sent (0: none)."""
        depth = dict.fromkeys(replicas, 0)
        alive = set(depth)
        for i, h in enumerate(hashes):
            holders = self._holders.get(h)
            if not holders:
                break
            alive &= holders
            if not alive:
                break
            for r in alive:
                depth[r] = i + 1
        return depth

    def record(self, hashes: Sequence[bytes], replica: str) -> None:
        for h in hashes:
            holders = self._holders.get(h)
            if holders is None:
                holders = self._holders[h] = set()
            else:
                self._holders.move_to_end(h)
            if replica not in holders:
                holders.add(replica)
                self._held[replica] = self._held.get(replica, 0) + 1
        while len(self._holders) > self.max_blocks:
            _, holders = self._holders.popitem(last=False)
            for r in holders:
                self._held[r] -= 1

    def forget(self, replica: str) -> None:
        """A replica is gone (or restarted with an empty cache)."""
        for h in [h for h, holders in self._holders.items() if replica in holders]:
            holders = self._holders[h]
            holders.discard(replica)
            if not holders:
                del self._holders[h]
        self._held.pop(replica, None)

    def blocks_held(self, replica: str) -> int:
        return self._held.get(replica, 0)


def rank_replicas(
    depths: Mapping[str, int],
    loads: Mapping[str, int],
    last_new: Mapping[str, float],
    imbalance_threshold: int,
) -> list[list[str]]:
    """The replicas in order of preference, as groups (the router takes the least loaded
    of the first group that has room):

    1. Those holding the longest prefix of the prompt, unless busier than the least busy
       replica by more than `imbalance_threshold` requests: recomputing a prefix elsewhere
       then costs less than queueing behind a full batch (and leaves a second copy of a
       hot prefix, so its later requests may go either way).
    2. Otherwise the least loaded replica, and among equals the one least recently sent
       a prompt it did not hold (`last_new`, a clock reading; never: absent), so distinct
       prompts take turns over idle replicas whatever each was sent before. (Ranking
       equals by prefix blocks held instead sent one new prompt after another to the
       same replica for as long as the other held more.)
    """
    replicas = sorted(depths, key=lambda r: (loads.get(r, 0), last_new.get(r, 0.0), r))
    if not replicas:
        return []
    least = loads.get(replicas[0], 0)
    best = max(depths.values())
    if best > 0:
        preferred = [
            r
            for r in replicas
            if depths[r] == best and loads.get(r, 0) - least <= imbalance_threshold
        ]
        if preferred:
            rest = [r for r in replicas if r not in preferred]
            return [preferred, *([rest] if rest else [])]
    return [[replicas[0]], *([replicas[1:]] if len(replicas) > 1 else [])]
