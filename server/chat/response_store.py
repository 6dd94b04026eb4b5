"""Responses kept for previous_response_id and GET (and chat completions kept with
`store`): an in-memory LRU, per process.

Bounded twice: by count and by bytes (a response's body and conversation as JSON), so a
client storing long conversations cannot grow the server's memory without end.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

MAX_STORED = 256
MAX_STORED_BYTES = 64 << 20


@dataclass
class StoredResponse:
    body: dict[str, Any]
    items: list[dict[str, Any]]  # the whole conversation as input items, outputs included
    # How many of the items were its input (the conversation before it, then its own
    # input): what GET /v1/responses/{id}/input_items lists.
    n_inputs: int = 0
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = len(json.dumps(self.body)) + len(json.dumps(self.items))


class ResponseStore:
    def __init__(self, capacity: int = MAX_STORED, max_bytes: int = MAX_STORED_BYTES) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def get(self, response_id: str) -> StoredResponse | None:
        stored = self._items.get(response_id)
        if stored is not None:
            self._items.move_to_end(response_id)
        return stored

    def put(self, response_id: str, stored: StoredResponse) -> None:
        """Keep a response, dropping the least recently used ones to stay in bounds; one
        bigger than the whole budget is not kept."""
        self.delete(response_id)
        if stored.size > self.max_bytes:
            return
        self._items[response_id] = stored
        self.bytes += stored.size
        while len(self._items) > self.capacity or self.bytes > self.max_bytes:
            _, oldest = self._items.popitem(last=False)
            self.bytes -= oldest.size

    def values(self) -> list[StoredResponse]:
        """Everything kept, without touching its recency."""
        return list(self._items.values())

    def delete(self, response_id: str) -> bool:
        stored = self._items.pop(response_id, None)
        if stored is None:
            return False
        self.bytes -= stored.size
        return True
