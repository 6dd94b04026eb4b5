"""A request's life inside the engine: its tokens, its KV progress and its output state."""

from __future__ import annotations

from server.engine.detokenizer import IncrementalDetokenizer
from server.engine.drafting import Drafter, DraftStats
from server.engine.logprobs import TokenLogprob
from server.engine.request import GenerationRequest
from server.engine.sampling import TokenSampler


class Sequence:
    __slots__ = (
        "detokenizer",
        "draft_stats",
        "drafter",
        "n_cached",
        "n_computed",
        "n_in_tree",
        "n_prompt",
        "prompt_logprobs",
        "request",
        "sampler",
        "seq_id",
        "tokens",
    )

    def __init__(
        self,
        request: GenerationRequest,
        sampler: TokenSampler,
        detokenizer: IncrementalDetokenizer,
    ) -> None:
        self.request = request
        self.sampler = sampler
        self.detokenizer = detokenizer
        self.tokens: list[int] = list(request.prompt_tokens)  # prompt, then generated tokens
        self.n_prompt = len(self.tokens)
        # Tokens whose KV is in the context under seq_id. The next one to feed is
        # tokens[n_computed]; logits are needed once the last token has been fed.
        self.n_computed = 0
        # Of those, the leading ones the prefix cache's tree holds (shared with others).
        self.n_in_tree = 0
        # Prompt tokens served from the cache when first admitted (usage.cached_tokens).
        self.n_cached: int | None = None
        self.seq_id: int | None = None
        # Log-probabilities of prompt tokens 1.., filled as the prompt is computed (if asked).
        self.prompt_logprobs: list[TokenLogprob] | None = (
            None if request.prompt_logprobs is None else []
        )
        # Prompt-lookup drafting (drafting.py); None: this sequence does not draft.
        self.drafter: Drafter | None = None
        self.draft_stats = DraftStats()

    def propose(self, k: int) -> list[int]:
        """Up to k draft tokens for the step after the last one (empty: none)."""
        if self.drafter is None or k <= 0 or self.n_uncomputed != 1:
            return []
        self.drafter.extend(self.tokens[len(self.drafter.tokens) :])
        return self.drafter.propose(k)

    @property
    def n_generated(self) -> int:
        return len(self.tokens) - self.n_prompt

    @property
    def n_uncomputed(self) -> int:
        return len(self.tokens) - self.n_computed

    @property
    def is_prefilling(self) -> bool:
        """More than the one freshly sampled token still needs to go through the model."""
        return self.n_uncomputed > 1

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Prompt log-probabilities still to compute: the prompt must not come from cache."""
        return self.prompt_logprobs is not None and len(self.prompt_logprobs) < self.n_prompt - 1

    def generated_tokens(self) -> list[int]:
        return self.tokens[self.n_prompt :]
