"""The raw engine loop: batched llama_decode with no HTTP, no queues, no scheduler.

The ceiling the server is held against: the same prompts, prefilled together, then one
decode step per output token over all sequences, greedy argmax sampling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from server.llama.context import ContextParams, LlamaContext, TokenBatch
from server.llama.model import LlamaModel


@dataclass
class RawResult:
    batch: int
    output_tokens: int
    prefill_seconds: float
    total_seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.total_seconds


def run_raw_loop(
    model: LlamaModel,
    prompts: list[list[int]],
    max_tokens: int,
    n_ctx: int,
    n_threads: int,
    n_batch: int = 512,
) -> RawResult:
    b = len(prompts)
    ctx = LlamaContext(
        model,
        ContextParams(
            n_ctx=n_ctx, n_seq_max=max(b, 1), n_batch=n_batch, n_ubatch=n_batch, n_threads=n_threads
        ),
    )
    batch = TokenBatch(n_batch)
    try:
        t0 = time.perf_counter()
        # Prefill, in as few decodes as the batch size allows.
        pending = [(s, pos, tok) for s, p in enumerate(prompts) for pos, tok in enumerate(p)]
        next_tokens = [0] * b
        while pending:
            batch.clear()
            part, pending = pending[:n_batch], pending[n_batch:]
            last_rows = []
            for s, pos, tok in part:
                is_last = pos == len(prompts[s]) - 1
                row = batch.add(tok, pos, s, is_last)
                if is_last:
                    last_rows.append((s, row))
            if ctx.decode(batch) != 0:
                raise RuntimeError("prefill failed")
            for s, row in last_rows:
                next_tokens[s] = int(np.argmax(ctx.logits(row)))
        prefill = time.perf_counter() - t0
        positions = [len(p) for p in prompts]
        produced = b
        for _ in range(max_tokens - 1):
            batch.clear()
            for s in range(b):
                batch.add(next_tokens[s], positions[s], s, True)
                positions[s] += 1
            if ctx.decode(batch) != 0:
                raise RuntimeError("decode failed")
            next_tokens = [int(np.argmax(ctx.logits(s))) for s in range(b)]
            produced += b
        total = time.perf_counter() - t0
    finally:
        batch.close()
        ctx.close()
    return RawResult(b, produced, prefill, total)
