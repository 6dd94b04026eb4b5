"""Responses kept for previous_response_id and GET (and chat completions kept with
`store`): an in-memory LRU, per process, written through to disk when given a KeptOnDisk
(kept_on_disk.py), so that they outlive a restart.

Bounded twice: by count and by bytes (a response's body and conversation as JSON), so a
client storing long conversations cannot grow the server's memory without end.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from server.chat.kept_on_disk import KeptOnDisk

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
    def __init__(
        self,
        capacity: int = MAX_STORED,
        max_bytes: int = MAX_STORED_BYTES,
        disk: KeptOnDisk | None = None,
        kind: str = "response",
    ) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._disk = None  # not while reading back what is already there
        for row in disk.read(kind, capacity) if disk is not None else []:
            try:
                stored = StoredResponse(_settled(row["body"]), row["items"], row["n_inputs"])
                self.put(row["id"], stored)
            except (KeyError, TypeError):
                continue
        self._disk, self._kind = disk, kind

    def get(self, response_id: str) -> StoredResponse | None:
        stored = self._items.get(response_id)
        if stored is not None:
            self._items.move_to_end(response_id)
        return stored

    def put(self, response_id: str, stored: StoredResponse) -> None:
        """Keep a response, dropping the least recently used ones to stay in bounds; one
        bigger than the whole budget is not kept."""
        self._drop(response_id)
        if stored.size > self.max_bytes:
            if self._disk is not None:
                self._disk.remove(self._kind, response_id)
            return
        self._items[response_id] = stored
        self.bytes += stored.size
        if self._disk is not None:
            row = {"id": response_id, "body": stored.body, "items": stored.items}
            self._disk.write(self._kind, response_id, {**row, "n_inputs": stored.n_inputs})
        while len(self._items) > self.capacity or self.bytes > self.max_bytes:
            oldest_id, oldest = self._items.popitem(last=False)
            self.bytes -= oldest.size
            if self._disk is not None:
                self._disk.remove(self._kind, oldest_id)

    def values(self) -> list[StoredResponse]:
        """Everything kept, without touching its recency."""
        return list(self._items.values())

    def delete(self, response_id: str) -> bool:
        if self._disk is not None:
            self._disk.remove(self._kind, response_id)
        return self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        stored = self._items.pop(response_id, None)
        if stored is None:
            return False
        self.bytes -= stored.size
        return True


def _settled(body: dict[str, Any]) -> dict[str, Any]:
    """A response read back after a restart: one that was still being made in the
    background then never will be, and says so."""
    if body.get("status") not in ("queued", "in_progress"):
        return body
    error = {"code": "server_error", "message": "The server stopped before it was made."}
    return {**body, "status": "failed", "error": error}
