"""What retrieval needs from an embedding model: tokens, vectors and their size.

The server's Embedder (server/engine/embedder.py) is one; retrieval knows it only
through this interface, never its model or context.
"""

from __future__ import annotations

import concurrent.futures
from typing import Protocol

import numpy as np


class Embeddings(Protocol):
    dim: int  # length of every vector
    max_tokens: int  # the longest input

    def tokenize(self, text: str) -> list[int]:
        """Token ids of an input, with the model's own markers (e.g. [CLS] ... [SEP])."""
        ...

    def count_tokens(self, text: str) -> int:
        """How many tokens the text itself is (no markers): for sizing chunks."""
        ...

    def submit(self, inputs: list[list[int]]) -> concurrent.futures.Future[np.ndarray]:
        """Unit vectors of the inputs, one row each; may raise EmbedderBusy when full."""
        ...
