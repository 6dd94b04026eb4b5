"""Retrieved chunks → a prompt that cites them, laid out so the prefix cache helps.

The system prompt and earlier turns are left exactly as they were, so their KV is reused
turn after turn. The sources go into the last user message, before the question, in a
deterministic order (by file and position, not by score): the same documents give the
same text, so questions about the same documents share that prefix too.
"""

from __future__ import annotations

from typing import Any

from retrieval.chunk_store import Hit

INSTRUCTIONS = (
    "Answer using the numbered sources below. Cite the sources you use as [1], [2], ... "
    "If they do not contain the answer, say so."
)
SNIPPET_CHARS = 300


def order_sources(hits: list[Hit]) -> list[Hit]:
    return sorted(hits, key=lambda h: (h.filename, h.file_id, h.chunk_index))


def _label(hit: Hit) -> str:
    return hit.filename + (f", page {hit.page}" if hit.page else "")


def augment(messages: list[dict[str, Any]], sources: list[Hit]) -> list[dict[str, Any]]:
    """A copy of messages whose last user message carries the sources before the question."""
    if not sources:
        return messages
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        return messages
    blocks = "\n\n".join(f"[{n}] ({_label(h)})\n{h.text}" for n, h in enumerate(sources, 1))
    question = messages[last_user]["content"]
    out = list(messages)
    out[last_user] = {
        **messages[last_user],
        "content": f"{INSTRUCTIONS}\n\n{blocks}\n\nQuestion: {question}",
    }
    return out


def citations(sources: list[Hit]) -> list[dict[str, Any]]:
    return [
        {
            "index": n,
            "vector_store_id": h.vector_store_id,
            "file_id": h.file_id,
            "filename": h.filename,
            "page": h.page,
            "chunk_index": h.chunk_index,
            "score": h.score,
            "snippet": h.text[:SNIPPET_CHARS],
        }
        for n, h in enumerate(sources, 1)
    ]


def latest_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message["role"] == "user" and message.get("content"):
            return str(message["content"])
    return ""
