"""Counters the engine thread writes and anyone may read (plain ints: a torn read is harmless)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from server.engine.host_kv import TierStats
from server.engine.prefix_cache import CacheStats


@dataclass
class DiskStats:
    """The disk tier (cache.persist_dir): what start-up read back and shutdown wrote."""

    loaded_entries: int = 0
    loaded_bytes: int = 0
    load_seconds: float = 0.0
    saved_entries: int = 0
    saved_bytes: int = 0
    save_seconds: float = 0.0


@dataclass
class StepProfile:
    """Where the engine thread's time goes, summed over steps (seconds): scheduling,
    filling the batch, handing outputs to the event loop, llama_decode, sampling (on a GPU
    it includes waiting for the graph), and applying the outcome (detokenizing, stop
    strings, finishing requests)."""

    steps: int = 0
    schedule: float = 0.0
    build: float = 0.0
    flush: float = 0.0
    decode: float = 0.0
    sample: float = 0.0
    apply: float = 0.0

    def per_step_ms(self) -> dict[str, float]:
        n = max(self.steps, 1)
        parts = ("schedule", "build", "flush", "decode", "sample", "apply")
        out = {k: round(getattr(self, k) * 1000 / n, 4) for k in parts}
        out["total"] = round(sum(out.values()), 4)
        return out


@dataclass
class EngineStats:
    n_cells: int
    max_running: int
    steps: int = 0
    # Steps whose one llama_decode held tokens of more than one sequence: batching at work.
    multi_sequence_steps: int = 0
    max_sequences_in_step: int = 0
    tokens_decoded: int = 0  # every token through llama_decode
    prompt_tokens_processed: int = 0
    decode_seconds: float = 0.0
    preemptions: int = 0
    # Prompt-lookup drafting: draft tokens verified, how many were accepted, and the
    # verifications (a sequence's draft checked in one step).
    draft_tokens: int = 0
    draft_accepted: int = 0
    draft_steps: int = 0
    # What a step of n tokens costs, ms, for the sizes seen (drafting.StepCost).
    step_ms_by_tokens: dict[int, float] = field(default_factory=dict)
    requests_finished: int = 0
    running: int = 0
    waiting: int = 0
    cells_used: int = 0
    cache_cells: int = 0  # cells in the prefix tree (shared prefixes counted once)
    cache_entries: int = 0  # finished requests whose KV the cache keeps
    sequence_ids: int = 0  # llama.cpp sequence ids the engine has (running + cache)
    free_sequence_ids: int = 0
    active: int = 0  # requests submitted and not yet answered (running, waiting, in flight)
    cache: CacheStats = field(default_factory=CacheStats)
    # The host-RAM tier: what it holds and what moved through it.
    ram_bytes: int = 0
    ram_entries: int = 0
    ram_budget: int = 0
    tier: TierStats = field(default_factory=TierStats)
    disk: DiskStats = field(default_factory=DiskStats)
    profile: StepProfile = field(default_factory=StepProfile)

    def record_step(
        self, n_sequences: int, n_tokens: int, n_prompt_tokens: int, seconds: float
    ) -> None:
        self.steps += 1
        if n_sequences > 1:
            self.multi_sequence_steps += 1
        self.max_sequences_in_step = max(self.max_sequences_in_step, n_sequences)
        self.tokens_decoded += n_tokens
        self.prompt_tokens_processed += n_prompt_tokens
        self.decode_seconds += seconds

    @property
    def draft_acceptance(self) -> float:
        """Share of draft tokens the sampler chose too (0 before any draft)."""
        return self.draft_accepted / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def tokens_per_draft_step(self) -> float:
        """Output tokens a verification produced on average: its accepted draft tokens and
        the sampler's own next one (1.0 would be a step without drafting)."""
        return (
            (self.draft_accepted + self.draft_steps) / self.draft_steps if self.draft_steps else 0.0
        )

    def snapshot(self) -> dict[str, object]:
        out: dict[str, object] = asdict(self)
        out["step_ms"] = self.profile.per_step_ms()  # the profile, per step
        out["draft_acceptance"] = round(self.draft_acceptance, 4)
        out["tokens_per_draft_step"] = round(self.tokens_per_draft_step, 4)
        return out
