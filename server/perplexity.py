"""`hearth eval perplexity MODEL.gguf --text FILE`, computed as llama.cpp's perplexity tool
does: the text is cut into chunks of n_ctx tokens, each evaluated from a fresh context, and
only the second half of each chunk is scored, so every scored token has context."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from server.llama.context import ContextParams, LlamaContext, TokenBatch
from server.llama.model import LlamaModel


class PerplexityError(ValueError):
    pass


def perplexity(
    model_path: Path, text: str, n_ctx: int = 512, threads: int = 0, max_chunks: int | None = None
) -> tuple[float, int]:
    """(perplexity, tokens scored)."""
    model = LlamaModel(model_path)
    try:
        tokens = model.tokenize(text, add_special=False)
        n_chunks = len(tokens) // n_ctx
        if max_chunks is not None:
            n_chunks = min(n_chunks, max_chunks)
        if n_chunks < 1:
            raise PerplexityError(
                f"the text has {len(tokens)} tokens; at least {n_ctx} are needed (--ctx)"
            )
        ctx = LlamaContext(
            model,
            ContextParams(
                n_ctx=n_ctx,
                n_seq_max=1,
                n_batch=n_ctx,
                n_ubatch=min(n_ctx, 512),
                n_threads=threads or os.cpu_count() or 1,
            ),
        )
        batch = TokenBatch(n_ctx)
        nll, scored = 0.0, 0
        first = n_ctx // 2
        try:
            for c in range(n_chunks):
                chunk = tokens[c * n_ctx : (c + 1) * n_ctx]
                if model.add_bos:
                    chunk = [model.bos_token, *chunk[1:]]
                ctx.clear()
                batch.clear()
                for pos, token in enumerate(chunk):
                    batch.add(token, pos, 0, pos >= first - 1 and pos < n_ctx - 1)
                if ctx.decode(batch) != 0:
                    raise PerplexityError("llama_decode failed")
                # The logits at position p predict the token at p + 1.
                for pos in range(first - 1, n_ctx - 1):
                    logits = ctx.logits(pos).astype(np.float64)
                    top = logits.max()
                    log_z = top + math.log(np.exp(logits - top).sum())
                    nll += log_z - logits[chunk[pos + 1]]
                    scored += 1
        finally:
            batch.close()
            ctx.close()
        return math.exp(nll / scored), scored
    finally:
        model.close()
