"""One step's batch: a plan in, ONE llama_decode, tokens and log-probabilities out.

Fills the batch with every planned chunk (decode tokens and prompt chunks, each sequence
under its own id), asks for logits only where they are used (each sequence's last token,
and the prompt positions a request scores), decodes, and samples each sequence whose last
token was in the batch. It changes no scheduling state: the engine applies the outcome.
A failure while scoring or sampling one sequence is that sequence's alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from server.engine.logprobs import TokenLogprob, token_logprob
from server.engine.scheduler import StepPlan
from server.engine.sequence import Sequence
from server.llama.context import DecodeStatus, LlamaContext, TokenBatch

logger = logging.getLogger("hearth.engine")


@dataclass(slots=True)
class Verified:
    """A sequence that verified a draft this step: the tokens it produced (the accepted
    draft tokens, then the sampler's own next one; None last when its grammar ended the
    output), their log-probabilities when asked, how many draft tokens were accepted, and
    how many were drafted."""

    seq: Sequence
    tokens: list[int | None]
    logprobs: list[TokenLogprob] | None
    accepted: int
    drafted: int


@dataclass
class StepOutcome:
    status: int  # llama_decode's (DecodeStatus.OK: the rest is filled)
    n_tokens: int = 0
    n_prompt_tokens: int = 0
    seconds: float = 0.0  # in llama_decode
    build_seconds: float = 0.0  # filling the batch
    flush_seconds: float = 0.0  # handing the last step's outputs to the event loop
    # Sampling, and scoring prompt tokens. On a GPU llama_decode returns once the graph is
    # queued; the first logits read waits for it, so that wait lands here.
    sample_seconds: float = 0.0
    # Each sampled sequence: its next token (None: its grammar allows nothing more) and,
    # when asked, that token's log-probability.
    sampled: list[tuple[Sequence, int | None, TokenLogprob | None]] = field(default_factory=list)
    # Log-probabilities of prompt tokens scored in this step, per sequence, in order.
    scored: list[tuple[Sequence, list[TokenLogprob]]] = field(default_factory=list)
    failed: list[tuple[Sequence, str]] = field(default_factory=list)
    verified: list[Verified] = field(default_factory=list)


class BatchRunner:
    def __init__(self, ctx: LlamaContext, n_batch: int) -> None:
        self.ctx = ctx
        self.batch = TokenBatch(n_batch)

    def run(self, plan: StepPlan, before_decode: Callable[[], None]) -> StepOutcome:
        """One llama_decode over the plan; before_decode runs just before it (the engine
        hands outputs to the event loop then, so both work while llama.cpp computes)."""
        t_build = time.perf_counter()
        batch = self.batch
        batch.clear()
        sample_at: list[tuple[Sequence, int]] = []
        # (sequence, batch index of its last token, the draft after it)
        verify_at: list[tuple[Sequence, int, list[int]]] = []
        # (sequence, first position, its batch index, count) of prompt tokens to score.
        score_at: list[tuple[Sequence, int, int, int]] = []
        n_prompt_tokens = 0
        for chunk in plan.chunks:
            seq = chunk.seq
            start = seq.n_computed
            end = start + chunk.n_tokens
            tokens = seq.tokens
            last = len(tokens) - 1
            # Logits at position p score prompt token p + 1, for requests that ask.
            scored_end = min(end, seq.n_prompt - 1) if seq.wants_prompt_logprobs else start
            first = batch.n_tokens
            for pos in range(start, end):
                index = batch.add(tokens[pos], pos, seq.seq_id, pos == last or pos < scored_end)
            if scored_end > start:
                score_at.append((seq, start, first, scored_end - start))
            if chunk.draft:
                # Each draft token is fed after the last one, with logits at every position:
                # the logits at the last token check the first draft token, and so on.
                for k, token in enumerate(chunk.draft):
                    batch.add(token, end + k, seq.seq_id, True)
                verify_at.append((seq, index, chunk.draft))
            elif end - 1 == last:
                sample_at.append((seq, index))
            if seq.is_prefilling:
                n_prompt_tokens += chunk.n_tokens
        t_flush = time.perf_counter()
        before_decode()
        t0 = time.perf_counter()
        status = self.ctx.decode(batch)
        t1 = time.perf_counter()
        outcome = StepOutcome(
            status,
            batch.n_tokens,
            n_prompt_tokens,
            t1 - t0,
            build_seconds=t_flush - t_build,
            flush_seconds=t0 - t_flush,
        )
        if status != DecodeStatus.OK:
            return outcome
        for seq, pos, index, count in score_at:
            try:
                outcome.scored.append((seq, self._score(seq, pos, index, count)))
            except Exception:
                logger.exception("scoring the prompt of request %d failed", seq.request.id)
                outcome.failed.append((seq, "internal error while scoring the prompt"))
        failed = {id(seq) for seq, _ in outcome.failed}
        for seq, index in sample_at:
            if seq.request.cancelled.is_set() or id(seq) in failed:
                continue  # a cancelled one is finished at the next inbox drain
            try:
                token = seq.sampler.sample(self.ctx, index)
                n_top = seq.request.logprobs
                logprob = None
                if token is not None and n_top is not None:
                    logprob = token_logprob(self.ctx.logits(index), token, n_top)
                outcome.sampled.append((seq, token, logprob))
            except Exception:
                logger.exception("sampling request %d failed", seq.request.id)
                outcome.failed.append((seq, "internal error while sampling"))
        for seq, index, draft in verify_at:
            if seq.request.cancelled.is_set() or id(seq) in failed:
                continue
            try:
                tokens, logprobs, accepted = self._verify(seq, index, draft)
                outcome.verified.append(Verified(seq, tokens, logprobs, accepted, len(draft)))
            except Exception:
                logger.exception("verifying a draft of request %d failed", seq.request.id)
                outcome.failed.append((seq, "internal error while sampling"))
        outcome.sample_seconds = time.perf_counter() - t1
        return outcome

    def _verify(
        self, seq: Sequence, index: int, draft: list[int]
    ) -> tuple[list[int | None], list[TokenLogprob] | None, int]:
        """Sample at the last token and at each draft token in turn, exactly as without a
        draft: a draft token is kept while it is what the sampler chooses there, and the
        first choice that differs (or the one after the whole draft) ends the run. Each
        choice is made with the sampler's state after the tokens before it (penalties,
        grammar, its random stream), so the output is the one the request would get
        without drafting, greedy or sampled, and a draft token is accepted with exactly its
        probability under the request's sampling. None ends the run when a grammar allows
        nothing more. Returns the produced tokens, their log-probabilities when asked, and
        how many draft tokens were accepted."""
        out: list[int | None] = []
        n_top = seq.request.logprobs
        logprobs: list[TokenLogprob] | None = None if n_top is None else []
        for k in range(len(draft) + 1):
            token = seq.sampler.sample(self.ctx, index + k)
            out.append(token)
            if token is None:
                return out, logprobs, k
            if logprobs is not None and n_top is not None:
                logprobs.append(token_logprob(self.ctx.logits(index + k), token, n_top))
            if k == len(draft) or token != draft[k]:
                return out, logprobs, k
        raise AssertionError("unreachable")

    def _score(self, seq: Sequence, pos: int, index: int, count: int) -> list[TokenLogprob]:
        """Log-probabilities of prompt tokens pos+1 .. pos+count not scored before (a
        prompt recomputed after preemption is not scored again)."""
        already = len(seq.prompt_logprobs or [])
        n_top = seq.request.prompt_logprobs
        assert n_top is not None
        return [
            token_logprob(self.ctx.logits(index + k), seq.tokens[pos + k + 1], n_top)
            for k in range(count)
            if pos + k >= already
        ]

    def close(self) -> None:
        self.batch.close()
