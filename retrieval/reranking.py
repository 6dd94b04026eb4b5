"""The second stage of search: a cross-encoder reorders the first stage's candidates.

A bi-encoder (the embedding model) and a full-text index judge a chunk without seeing the
question; a cross-encoder reads both together, which is what puts the passage that answers
first (BM25 plus a cross-encoder is the strongest general recipe in BEIR). It costs one
model pass per candidate, so only the first stage's top `candidates` are reranked.

Retrieval knows the reranker only through `Reranking` (the server's Reranker is one).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from dataclasses import replace
from typing import Protocol

import numpy as np

from retrieval.chunk_store import Hit


class Reranking(Protocol):
    def score(self, query: str, documents: list[str]) -> concurrent.futures.Future[np.ndarray]:
        """Relevance logits of (query, document) pairs; tokenizes in the calling thread."""
        ...


def relevance(logit: float) -> float:
    """A logit as a 0..1 relevance (Cohere's and Jina's relevance_score), order kept."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    z = math.exp(logit)
    return z / (1.0 + z)


async def rerank(reranker: Reranking, query: str, hits: list[Hit]) -> list[Hit]:
    """The hits ordered by the reranker, each scored with its 0..1 relevance. What the
    reranker reads is what was indexed (context, then text), as the embedding saw it."""
    if not hits:
        return []
    future = await asyncio.to_thread(reranker.score, query, [h.indexed_text for h in hits])
    logits = await asyncio.wrap_future(future)
    order = sorted(range(len(hits)), key=lambda i: float(logits[i]), reverse=True)
    return [replace(hits[i], score=relevance(float(logits[i]))) for i in order]
