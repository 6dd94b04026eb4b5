"""Prompt-lookup drafting (issue 19): guess a sequence's next tokens from its own past.

Answers that quote their sources, summaries and code edits repeat spans of their prompt.
Given the tokens so far (prompt and output), the drafter finds the most recent earlier
place where the last n tokens occurred (the longest n first, from max_ngram down to
min_ngram) and proposes the tokens that followed there. The engine verifies a proposal in
its one `llama_decode` and keeps the tokens the model itself would have produced.

The index is incremental: each appended token registers the n-grams that end just before
it, so a lookup for the current suffix finds only earlier occurrences, in O(max_ngram)
dictionary operations per token, and memory grows with the sequence (one entry per n-gram
length per token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class PromptLookup:
    max_ngram: int = 3
    min_ngram: int = 2
    tokens: list[int] = field(default_factory=list)
    # (n-gram) -> where its most recent earlier occurrence's continuation starts
    _index: dict[tuple[int, ...], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        tokens, self.tokens = self.tokens, []
        self.extend(tokens)

    def extend(self, new: Sequence[int]) -> None:
        for token in new:
            # Register the n-grams ending at the current last token: they are "earlier"
            # once this token follows them; their continuation starts here.
            end = len(self.tokens)
            for n in range(self.min_ngram, self.max_ngram + 1):
                if end >= n:
                    self._index[tuple(self.tokens[end - n : end])] = end
            self.tokens.append(token)

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that followed the longest earlier match of the current suffix
        (empty when nothing matches)."""
        if k <= 0:
            return []
        size = len(self.tokens)
        for n in range(min(self.max_ngram, size), self.min_ngram - 1, -1):
            start = self._index.get(tuple(self.tokens[size - n :]))
            if start is not None:
                return self.tokens[start : start + k]
        return []


class Drafter(Protocol):
    """What a sequence drafts from: fed the sequence's tokens (prompt, then output) as
    they come, it proposes the next ones."""

    tokens: list[int]

    def extend(self, new: Sequence[int]) -> None: ...

    def propose(self, k: int) -> list[int]: ...


class PredictionLookup:
    """Drafts from the output the client predicted (OpenAI's Predicted Outputs: a file
    to edit, a document to regenerate with a change), falling back to prompt lookup.

    The output is expected to follow the prediction from its start; while it does, the
    next predicted tokens are proposed. Where it departs (the edit), the last generated
    tokens are looked up in the prediction (longest n-gram first, the occurrence nearest
    after where the output last followed it) and drafting resumes after the match, so an
    edit in the middle costs only the edited tokens. `matched` counts output tokens that
    followed the prediction: usage's accepted_prediction_tokens."""

    def __init__(
        self,
        prediction: Sequence[int],
        n_prompt: int,
        fallback: PromptLookup | None = None,
        max_ngram: int = 4,
        min_ngram: int = 2,
    ) -> None:
        self.prediction = list(prediction)
        self.n_prompt = n_prompt
        self.fallback = fallback
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.tokens: list[int] = []
        self.matched = 0
        # Where in the prediction the output continues (None: it departed; not found yet).
        self._next: int | None = 0
        self._cursor = 0  # the furthest point in the prediction the output has followed
        # n-gram -> the positions just after each of its occurrences, in order
        self._index: dict[tuple[int, ...], list[int]] = {}
        p = self.prediction
        for n in range(min_ngram, max_ngram + 1):
            for end in range(n, len(p) + 1):
                self._index.setdefault(tuple(p[end - n : end]), []).append(end)

    def extend(self, new: Sequence[int]) -> None:
        if self.fallback is not None:
            self.fallback.extend(new)
        for token in new:
            self.tokens.append(token)
            if len(self.tokens) <= self.n_prompt:
                continue  # the prompt: the prediction is of the output
            nxt = self._next
            if nxt is not None and nxt < len(self.prediction) and self.prediction[nxt] == token:
                self.matched += 1
                self._next = self._cursor = nxt + 1
            else:
                self._next = self._resync()

    def _resync(self) -> int | None:
        output = self.tokens[self.n_prompt :]
        for n in range(min(self.max_ngram, len(output)), self.min_ngram - 1, -1):
            ends = self._index.get(tuple(output[-n:]))
            if ends:
                return next((e for e in ends if e >= self._cursor), ends[0])
        return None

    def propose(self, k: int) -> list[int]:
        if k <= 0:
            return []
        nxt = self._next
        if nxt is not None and nxt < len(self.prediction):
            return self.prediction[nxt : nxt + k]
        return self.fallback.propose(k) if self.fallback is not None else []


@dataclass
class DraftStats:
    """How a sequence's drafts fare: an estimate of the chance that its next draft token
    is accepted given the one before it was (Beta(1, 1) prior; older verifications weigh
    less, since a sequence copies in runs: a quote, then prose). Totals over all
    sequences are the engine's (EngineStats.draft_*)."""

    _hits: float = 0.0
    _misses: float = 0.0

    @classmethod
    def expecting(cls, hits: float) -> DraftStats:
        """Stats that start as if `hits` draft tokens had been accepted in a row (a client's
        prediction is meant to be followed: its drafts start long)."""
        return cls(_hits=hits)

    def record(self, drafted: int, accepted: int) -> None:
        self._hits = RECENCY * self._hits + accepted
        self._misses = RECENCY * self._misses + (1 if accepted < drafted else 0)

    @property
    def next_token_acceptance(self) -> float:
        return (self._hits + 1) / (self._hits + self._misses + 2)


# Weight of a verification after each later one, in the acceptance estimate.
RECENCY = 0.8


@dataclass
class StepCost:
    """What a step costs as a function of its tokens, measured as the engine runs:
    seconds ~= base + per_token * tokens, fitted (exponentially weighted least squares)
    over small steps of decode and draft tokens only (the engine leaves out steps with
    prompt chunks), where decoding and drafting live. On two CPU cores here a token
    costs about half a one-token step (llama.cpp is compute-bound even at two tokens);
    on a GPU a hundredth. Until the steps seen vary in size, per_token is PRIOR_RATIO of
    the base: drafting starts cautious, and its own steps teach the fit."""

    base: float = 0.0
    per_token: float = 0.0
    _w: float = 0.0
    _x: float = 0.0
    _y: float = 0.0
    _xx: float = 0.0
    _xy: float = 0.0

    def observe(self, n_tokens: int, seconds: float) -> None:
        if n_tokens > MAX_FIT_TOKENS or seconds <= 0:
            return
        d = FIT_DECAY
        self._w = d * self._w + 1
        self._x = d * self._x + n_tokens
        self._y = d * self._y + seconds
        self._xx = d * self._xx + n_tokens * n_tokens
        self._xy = d * self._xy + n_tokens * seconds
        mx, my = self._x / self._w, self._y / self._w
        var = self._xx / self._w - mx * mx
        if var >= MIN_FIT_VARIANCE:
            slope = (self._xy / self._w - mx * my) / var
            self.per_token = max(slope, 0.0)
            self.base = max(my - self.per_token * mx, self.per_token)
        else:
            # All steps alike so far: split their time by the prior ratio.
            self.base = my / (1 + PRIOR_RATIO * (mx - 1)) if mx >= 1 else my
            self.per_token = PRIOR_RATIO * self.base

    @property
    def measured(self) -> bool:
        return self._w > 0


# Steps up to this many tokens enter the fit (prefill chunks run at another efficiency).
MAX_FIT_TOKENS = 64
FIT_DECAY = 0.99  # about the last hundred steps
MIN_FIT_VARIANCE = 0.5  # tokens squared: the steps differ enough in size to fit a slope
PRIOR_RATIO = 0.5


def draft_length(
    stats: DraftStats,
    cost: StepCost,
    max_draft: int,
    batch_tokens: int,
    n_outputs: int,
    room: int,
) -> int:
    """How many tokens to draft for a sequence this step. The step already holds
    batch_tokens tokens and yields n_outputs output tokens (one per decoding sequence);
    draft token i adds per_token to its time and yields a token with probability about
    alpha**i (alpha: the chance a draft token is accepted after the one before was). It
    is worth adding while alpha**i is at least what a token's worth of the step's time
    yields already: so nothing where a token costs much and the batch is wide (a CPU at
    concurrency 8), long drafts where it costs little (a GPU), short or none for
    sequences whose drafts are rarely accepted."""
    if max_draft <= 0 or room <= 0 or not cost.measured or n_outputs <= 0:
        return 0
    step_seconds = cost.base + cost.per_token * batch_tokens
    threshold = cost.per_token * n_outputs / step_seconds if step_seconds > 0 else 0.0
    alpha = stats.next_token_acceptance
    k, reach = 0, 1.0
    while k < min(max_draft, room):
        reach *= alpha
        if reach < threshold:
            break
        k += 1
    return k
