"""Prompt-lookup drafting's index and policy (server/engine/drafting.py), alone: the
engine's use of it is issue 19's next step."""

from __future__ import annotations

import random

import pytest

from server.engine.drafting import DraftStats, PromptLookup, draft_length


def test_a_quoted_span_is_proposed_from_the_prompt() -> None:
    prompt = [10, 11, 12, 13, 14, 15, 16, 99, 98]
    d = PromptLookup(tokens=prompt)
    d.extend([11, 12])  # the answer starts quoting the prompt
    assert d.propose(4) == [13, 14, 15, 16]
    assert d.propose(2) == [13, 14]
    d.extend([13, 14, 15, 16, 99, 98])
    assert d.propose(3) == [11, 12, 13]  # the next quote of what followed
    assert d.propose(0) == []


def test_the_longest_and_most_recent_match_wins() -> None:
    d = PromptLookup(max_ngram=3, min_ngram=1, tokens=[1, 2, 7, 5, 2, 8, 9, 1, 2, 3, 4])
    d.extend([0, 1, 2])
    # "1 2" occurred at 0 (then 7) and at 7 (then 3): the most recent one.
    assert d.propose(2) == [3, 4]
    d.extend([3])
    # "1 2 3" (length 3) beats "3" alone.
    assert d.propose(1) == [4]


def test_no_match_proposes_nothing_and_the_suffix_never_matches_itself() -> None:
    d = PromptLookup(tokens=[1, 2, 3])
    assert d.propose(4) == []
    d.extend([4, 5])
    assert d.propose(4) == []


@pytest.mark.parametrize("seed", range(5))
def test_incremental_index_equals_a_scan(seed: int) -> None:
    rng = random.Random(seed)
    tokens = [rng.randrange(6) for _ in range(300)]
    d = PromptLookup(max_ngram=3, min_ngram=2)
    for i, t in enumerate(tokens):
        d.extend([t])
        seen = tokens[: i + 1]
        expected: list[int] = []
        for n in range(min(3, len(seen)), 1, -1):
            suffix = seen[-n:]
            starts = [j for j in range(len(seen) - n) if seen[j : j + n] == suffix]
            if starts:
                start = starts[-1] + n
                expected = seen[start : start + 5]
                break
        assert d.propose(5) == expected, i


def test_drafting_stops_where_it_does_not_pay() -> None:
    stats = DraftStats()
    assert draft_length(stats, max_draft=8, batch_tokens=1, budget=512) == 8
    assert draft_length(stats, max_draft=8, batch_tokens=508, budget=512) == 4
    assert draft_length(stats, max_draft=8, batch_tokens=600, budget=512) == 0
    for _ in range(4):
        stats.record(drafted=8, accepted=1)
    assert stats.acceptance == 0.125
    assert draft_length(stats, max_draft=8, batch_tokens=1, budget=512) == 0
    with pytest.raises(ValueError):
        PromptLookup(max_ngram=1, min_ngram=2)
