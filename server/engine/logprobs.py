"""Log-probabilities of sampled tokens, from the model's raw logits (as vLLM reports them:
before temperature, penalties or bias), computed only for requests that ask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the most likely tokens, best first


def token_logprob(logits: np.ndarray, token: int, n_top: int) -> TokenLogprob:
    shifted = logits - logits.max()
    log_z = float(np.log(np.exp(shifted, dtype=np.float64).sum()))
    top: list[tuple[int, float]] = []
    if n_top > 0:
        ids = np.argpartition(-shifted, n_top)[:n_top]
        ids = ids[np.argsort(-shifted[ids])]
        top = [(int(i), float(shifted[i]) - log_z) for i in ids]
    return TokenLogprob(token, float(shifted[token]) - log_z, top)
