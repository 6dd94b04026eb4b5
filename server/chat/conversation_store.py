"""Conversations (OpenAI's Conversations API): items a client keeps on the server, which
a response given `conversation` reads as its history and extends with its input and
output. In memory, per process, as stored responses are (response_store.py), and written
through to disk when given a KeptOnDisk (kept_on_disk.py).

Bounded by count and by bytes (least recently used out), and each conversation by bytes,
so a client cannot grow the server's memory without end.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from server.chat.kept_on_disk import KeptOnDisk
from server.errors import InvalidRequest, NotFound

MAX_CONVERSATIONS = 1024
MAX_CONVERSATIONS_BYTES = 128 << 20
MAX_CONVERSATION_BYTES = 16 << 20


def _size(items: list[dict[str, Any]]) -> int:
    return sum(len(json.dumps(item)) for item in items)


@dataclass
class Conversation:
    id: str
    metadata: dict[str, str]
    items: list[dict[str, Any]] = field(default_factory=list)  # oldest first, each with id
    created_at: int = field(default_factory=lambda: int(time.time()))
    size: int = 0

    def item(self, item_id: str) -> dict[str, Any] | None:
        return next((item for item in self.items if item.get("id") == item_id), None)


class ConversationStore:
    def __init__(
        self,
        capacity: int = MAX_CONVERSATIONS,
        max_bytes: int = MAX_CONVERSATIONS_BYTES,
        max_conversation_bytes: int = MAX_CONVERSATION_BYTES,
        disk: KeptOnDisk | None = None,
    ) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.max_conversation_bytes = max_conversation_bytes
        self.bytes = 0
        self._kept: OrderedDict[str, Conversation] = OrderedDict()
        self._disk = None  # not while reading back what is already there
        for row in disk.read("conversation", capacity) if disk is not None else []:
            try:
                self.add(Conversation(row["id"], row["metadata"], row["items"], row["created_at"]))
            except (KeyError, TypeError, InvalidRequest):
                continue
        self._disk = disk

    def changed(self, conversation: Conversation) -> None:
        """Write a conversation through to disk (after any change to it)."""
        if self._disk is not None and self._kept.get(conversation.id) is conversation:
            row = {
                "id": conversation.id,
                "metadata": conversation.metadata,
                "items": conversation.items,
                "created_at": conversation.created_at,
            }
            self._disk.write("conversation", conversation.id, row)

    def _forget(self, conversation_id: str) -> Conversation | None:
        conversation = self._kept.pop(conversation_id, None)
        if conversation is not None:
            self.bytes -= conversation.size
        if self._disk is not None:
            self._disk.remove("conversation", conversation_id)
        return conversation

    def get(self, conversation_id: str) -> Conversation | None:
        conversation = self._kept.get(conversation_id)
        if conversation is not None:
            self._kept.move_to_end(conversation_id)
        return conversation

    def require(self, conversation_id: str, param: str = "conversation_id") -> Conversation:
        conversation = self.get(conversation_id)
        if conversation is None:
            raise NotFound(
                f"Conversation with id '{conversation_id}' not found.",
                param=param,
                code="conversation_not_found",
            )
        return conversation

    def add(self, conversation: Conversation) -> None:
        """Keep a new conversation (its items, if any, already in it)."""
        conversation.size = _size(conversation.items)
        if conversation.size > self.max_conversation_bytes:
            raise InvalidRequest("These items are too large for one conversation.", "items")
        self._kept[conversation.id] = conversation
        self.bytes += conversation.size
        self.changed(conversation)
        self._bound(keep=conversation.id)

    def check_room(self, conversation: Conversation, items: list[dict[str, Any]]) -> None:
        """InvalidRequest unless the items fit in the conversation's bound."""
        if conversation.size + _size(items) > self.max_conversation_bytes:
            raise InvalidRequest(
                f"Conversation '{conversation.id}' is full; start a new one.",
                param="items",
                code="conversation_too_large",
            )

    def extend(
        self, conversation: Conversation, items: list[dict[str, Any]], force: bool = False
    ) -> None:
        """Append items; past the conversation's bound InvalidRequest and nothing added,
        unless `force` (a response's output, whose input was checked before it ran)."""
        added = _size(items)
        if not force:
            self.check_room(conversation, items)
        conversation.items.extend(items)
        conversation.size += added
        if self._kept.get(conversation.id) is conversation:
            self.bytes += added
            self._kept.move_to_end(conversation.id)
            self.changed(conversation)
            self._bound(keep=conversation.id)

    def remove_item(self, conversation: Conversation, item_id: str) -> bool:
        item = conversation.item(item_id)
        if item is None:
            return False
        conversation.items.remove(item)
        removed = _size([item])
        conversation.size -= removed
        if self._kept.get(conversation.id) is conversation:
            self.bytes -= removed
            self.changed(conversation)
        return True

    def delete(self, conversation_id: str) -> bool:
        return self._forget(conversation_id) is not None

    def _bound(self, keep: str) -> None:
        while len(self._kept) > self.capacity or self.bytes > self.max_bytes:
            oldest = next(iter(self._kept))
            if oldest == keep:
                break
            self._forget(oldest)
