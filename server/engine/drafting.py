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


@dataclass
class DraftStats:
    """How drafting pays for one sequence: a draft costs its tokens in the batch, and only
    the accepted ones save a step."""

    drafted: int = 0
    accepted: int = 0
    drafts: int = 0

    def record(self, drafted: int, accepted: int) -> None:
        self.drafted += drafted
        self.accepted += accepted
        self.drafts += 1

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


# Drafting pays only while the batch is narrow: a draft's tokens cost compute like any
# other, and a wide batch already keeps the hardware busy (published measurements: with
# 4-8 busy sequences drafting made servers slower; measured here: 0.76-0.87x at 8).
MAX_DRAFTING_SEQUENCES = 2
# Below this share of draft tokens accepted (after a few drafts) a sequence stops drafting.
MIN_ACCEPTANCE = 0.4


def draft_length(
    stats: DraftStats, max_draft: int, batch_tokens: int, budget: int, n_decoding: int = 1
) -> int:
    """How many tokens to draft for a sequence this step: none in a wide batch, none once
    this sequence's drafts have been tried and rarely accepted, else about twice what its
    drafts have been accepted at on average (at least 2), up to max_draft and what the
    step's token budget has left."""
    if n_decoding > MAX_DRAFTING_SEQUENCES:
        return 0
    k = max_draft
    if stats.drafts >= 4:
        if stats.acceptance < MIN_ACCEPTANCE:
            return 0
        k = min(max_draft, max(2, round(2 * stats.accepted / stats.drafts)))
    return max(0, min(k, budget - batch_tokens))
