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

import bisect
from collections.abc import Callable, Sequence
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


# Weight of a verification after each later one, in a sequence's acceptance estimate, and
# in the engine's estimate over all sequences (which remembers more of them).
RECENCY = 0.8
POPULATION_RECENCY = 0.95
PRIOR_WEIGHT = 0.5


@dataclass
class DraftStats:
    """How a sequence's drafts fare: for each draft position i, the chance that at least
    i draft tokens are accepted, from its recent verifications (older ones weigh less,
    since a sequence copies in runs: a quote, then prose). Per position and not one rate,
    because acceptance comes in runs: a copying sequence takes all eight tokens of most
    drafts and none of a few, which a single rate would call five. Each position starts
    from PRIOR_WEIGHT of a verification accepting with the prior's chance: by default
    0.5**i; for a new sequence, what recent sequences' drafts did (the engine's
    `population`, fed every record, remembering more of them): a workload of quoting
    answers drafts from a request's first tokens, one of prose waits for evidence.

    A proposal the step does not verify is watched instead: checked against the output as
    it comes, it teaches the estimate what a draft would have done, for free. So a
    sequence that starts copying is seen to copy before it pays for a draft, where a
    verification costs much (two tokens in a step cost more than twice one on a CPU).
    Totals over all sequences are the engine's (EngineStats.draft_*)."""

    prior: list[float] = field(default_factory=list)  # [i-1]; past its end, 0.5**i
    population: DraftStats | None = None  # also told every record
    recency: float = RECENCY  # weight of a record after each later one
    _reached: list[float] = field(default_factory=list)  # [i-1]: verifications of >= i
    _accepted: list[float] = field(default_factory=list)  # [i-1]: of them, >= i accepted
    _watched: list[int] = field(default_factory=list)
    _watched_at: int = 0  # where in the sequence's tokens the watched proposal starts
    # The last draft (or watched proposal) was accepted whole: the sequence is copying, and
    # a longer draft may be worth its price (Scheduler.max_draft_alone).
    copying: bool = False

    @classmethod
    def expecting(cls, tokens: int, times: int) -> DraftStats:
        """Stats that start as if `times` drafts of `tokens` had been accepted whole (a
        client's prediction is meant to be followed: its drafts start long)."""
        stats = cls()
        for _ in range(times):
            stats.record(tokens, tokens)
        return stats

    def for_new_sequence(self, k: int) -> DraftStats:
        """A sequence's stats, starting from what this population's drafts did."""
        return DraftStats(prior=self.reach(k), population=self)

    def record(self, drafted: int, accepted: int) -> None:
        if self.population is not None:
            self.population.record(drafted, accepted)
        self.copying = 0 < drafted <= accepted
        grow = drafted - len(self._reached)
        if grow > 0:
            self._reached += [0.0] * grow
            self._accepted += [0.0] * grow
        for i in range(len(self._reached)):
            self._reached[i] *= self.recency
            self._accepted[i] *= self.recency
            if i < drafted:
                self._reached[i] += 1
                self._accepted[i] += i < accepted

    def reach(self, k: int) -> list[float]:
        """[i-1]: the chance that a draft of k tokens gets at least i of them accepted
        (never rising with i)."""
        out: list[float] = []
        for i in range(k):
            prior = self.prior[i] if i < len(self.prior) else 0.5 ** (i + 1)
            if i < len(self._reached):
                p = (self._accepted[i] + PRIOR_WEIGHT * prior) / (self._reached[i] + PRIOR_WEIGHT)
            else:
                p = prior
            out.append(min(p, out[-1]) if out else p)
        return out

    def watch(self, proposal: Sequence[int], at: int) -> None:
        """Follow an undrafted proposal for tokens[at:] (one at a time)."""
        if not self._watched and proposal:
            self._watched, self._watched_at = list(proposal), at

    def unwatch(self) -> None:
        """The sequence drafts for real: its verification is the evidence."""
        self._watched = []

    def settle(self, tokens: Sequence[int]) -> None:
        """Record the watched proposal once the output has confirmed it whole or departed."""
        watched = self._watched
        if not watched:
            return
        out = tokens[self._watched_at : self._watched_at + len(watched)]
        n = 0
        while n < len(out) and out[n] == watched[n]:
            n += 1
        if n < len(out) or len(out) == len(watched):
            self.record(len(watched), n)
            self._watched = []


@dataclass
class StepCost:
    """Seconds a step takes by its number of tokens, measured as the engine runs, over
    steps of decode and draft tokens only; steps with prompt chunks are kept apart, as
    seconds per token (`prompt_step_token_seconds`): what one more token costs in a step
    that is already wide (on two CPU cores here 2.5 ms, a draft token 2.4 ms and a prompt
    token 1.9 ms more in a step of 150 prompt tokens and 7 decodes).

    Not a line: on two CPU cores here one token takes 7 ms, two 17 ms, eight 29 ms and
    sixteen 37 ms (llama.cpp's CPU kernels go from matrix-vector to matrix-matrix at two
    tokens and tile by four and eight, so six cost more than eight); on a GPU sixteen cost
    about what one does. So each size keeps its own mean; a size not seen yet is read off
    the line between the nearest seen sizes around it, and past the largest seen size L
    it is guessed as t(L) * sqrt(n / L): hopefully, since the step that tries it corrects
    the guess, where a cautious guess would never be tried. For the same reason a size
    seen fewer than TRUSTED_AFTER times is taken to cost no more than the cheapest larger
    size: one slow step (or one read off a line, as eight tokens between five and eleven
    here: 43 ms where they cost 30) must not keep a size out of every later plan.

    The machine's speed drifts (here by 1.5x between minutes), and the sizes a plan rarely
    picks are measured rarely: their means would be stale beside the size measured every
    step, and drafts would look dearer or cheaper than they are. So the table holds each
    size's cost relative to `level`, how slow the machine runs now, which every step
    updates (its time against its size's mean): a slower minute makes every size dearer
    at once. (Measured: engines stepped in turn at concurrency 1, 1.07-1.09x on code edits
    and sampled quotes, 1.02x on greedy quotes, against per-size means alone.)"""

    _mean: dict[int, float] = field(default_factory=dict)  # tokens -> mean seconds / level
    _count: dict[int, int] = field(default_factory=dict)
    _sizes: list[int] = field(default_factory=list)  # the keys, sorted (a plan reads many)
    _cheapest_from: list[float] = field(default_factory=list)  # [i]: min mean of _sizes[i:]
    level: float = 1.0  # how slow the machine is now, relative to the table
    prompt_step_token_seconds: float | None = None  # mean over recent prompt steps

    def observe(self, n_tokens: int, seconds: float) -> None:
        if not 1 <= n_tokens <= MAX_FIT_TOKENS or seconds <= 0:
            return
        known = self._mean.get(n_tokens)
        if known is not None:
            self.level *= (seconds / (self.level * known)) ** LEVEL_WEIGHT
        seconds /= self.level
        count = self._count.get(n_tokens, 0) + 1
        self._count[n_tokens] = count
        if count == 1:
            bisect.insort(self._sizes, n_tokens)
        mean = known if known is not None else seconds
        self._mean[n_tokens] = mean + (seconds - mean) * max(1 / count, SIZE_WEIGHT)
        cheapest, low = [], float("inf")
        for n in reversed(self._sizes):
            low = min(low, self._mean[n])
            cheapest.append(low)
        self._cheapest_from = cheapest[::-1]

    def observe_prompt_step(self, n_tokens: int, seconds: float) -> None:
        if n_tokens <= 0 or seconds <= 0:
            return
        per_token, old = seconds / n_tokens, self.prompt_step_token_seconds
        self.prompt_step_token_seconds = (
            per_token if old is None else old + (per_token - old) * SIZE_WEIGHT
        )

    @property
    def measured(self) -> bool:
        return bool(self._mean)

    def by_size_ms(self) -> dict[int, float]:
        return {n: round(t * self.level * 1000, 3) for n, t in sorted(self._mean.items())}

    def seconds(self, n_tokens: int) -> float:
        """What a step of n_tokens is expected to take (0 before any step was seen)."""
        estimate = self._relative(n_tokens)
        if self._count.get(n_tokens, 0) < TRUSTED_AFTER:
            larger = bisect.bisect_right(self._sizes, n_tokens)
            if larger < len(self._sizes):
                estimate = min(estimate, self._cheapest_from[larger])
        return estimate * self.level

    def _relative(self, n_tokens: int) -> float:
        if n_tokens in self._mean:
            return self._mean[n_tokens]
        i = bisect.bisect_left(self._sizes, n_tokens)
        below = self._sizes[i - 1] if i > 0 else None
        above = self._sizes[i] if i < len(self._sizes) else None
        if below is not None and above is not None:
            lo, hi = self._mean[below], self._mean[above]
            return lo + (hi - lo) * (n_tokens - below) / (above - below)
        nearest = below if below is not None else above
        if nearest is None:
            return 0.0
        return self._mean[nearest] * (n_tokens / nearest) ** 0.5


# Steps up to this many tokens enter the table (a bound on its size; the engine leaves out
# steps with prompt chunks). Wide: on a GPU, 32 sequences with eight-token drafts make
# steps of 288 tokens, which must be measured to be tried again.
MAX_FIT_TOKENS = 4096
SIZE_WEIGHT = 0.1  # a size's mean follows its last ten or so steps
# Each step moves the machine's level this far (in log terms) toward what it measured: the
# level follows the last five or so steps, faster than any size's own mean.
LEVEL_WEIGHT = 0.2
TRUSTED_AFTER = 3  # steps of a size before it may cost more than a larger size
# A plan with drafts must promise this much more output per second than one without:
# the estimates are noisy, and a draft that merely breaks even still costs latency.
MIN_GAIN = 0.05


def plan_drafts(
    candidates: Sequence[Sequence[float]],
    cost: StepCost,
    n_tokens: int,
    n_outputs: int,
    room: int,
    n_prompt: int = 0,
) -> list[int]:
    """How many tokens each candidate drafts this step. A candidate is the chance, for
    each token its drafter proposes, that the draft gets at least that far accepted
    (DraftStats.reach). The step already holds n_tokens tokens and yields n_outputs output
    tokens; a draft token adds a token with its chance. Draft tokens are taken most likely
    first, and the step gets as many as make its expected output per second highest (not
    merely while the next one pays: a step's time is not a line in its size), if that
    beats no drafts by MIN_GAIN: long drafts where tokens cost little (a GPU) or a
    sequence copies, none where the batch is wide on a CPU and sequences write their own
    prose.

    A step that also computes n_prompt prompt tokens is judged by its decodes alone: a
    draft token there costs what a token costs in such a step, and must yield output
    cheaper than a step of those decodes alone would. (Its prompt work is not output, but
    it is owed anyway: counting it would make any draft look cheap beside it. Measured
    here, drafts priced that way took 250 draft tokens a run into steps with prompts, at
    63% acceptance, and made sustained load 9% slower.)"""
    lengths = [0] * len(candidates)
    if room <= 0 or n_outputs <= 0 or not cost.measured:
        return lengths
    seconds: Callable[[int], float] = cost.seconds
    if n_prompt:
        per_token = cost.prompt_step_token_seconds
        if per_token is None:
            return lengths
        decodes = n_tokens - n_prompt
        base = cost.seconds(decodes)
        n_tokens = decodes

        def seconds(n: int) -> float:
            return base + (n - decodes) * per_token

    tokens = sorted(
        ((p, c) for c, reach in enumerate(candidates) for p in reach),
        key=lambda t: -t[0],
    )[:room]
    if not tokens:
        return lengths
    best_rate = n_outputs / seconds(n_tokens) * (1 + MIN_GAIN)
    best, expected = 0, float(n_outputs)
    for d, (p, _) in enumerate(tokens, 1):
        expected += p
        rate = expected / seconds(n_tokens + d)
        if rate > best_rate:
            best, best_rate = d, rate
    for _, c in tokens[:best]:
        lengths[c] += 1
    return lengths
