"""A stand-in for the engine, for tests of the HTTP layer where generating is not the point:
the Engine's interface, no llama.cpp context. Every request is answered at once with the
same scripted text, one token per output (so streams have several chunks), with logprobs
when asked. The model (tokenizer, template) is the real one.
"""

from __future__ import annotations

from pathlib import Path

from retrieval.ingestion import ChunkingOptions
from retrieval.service import RetrievalService
from retrieval.storage import Storage
from server.chat.prompt import PromptBuilder
from server.chat.template import CHATML_TEMPLATE, ChatTemplate
from server.engine.engine import ContextLengthExceeded, EngineBusy
from server.engine.logprobs import TokenLogprob
from server.engine.request import FinishReason, GenerationOutput, GenerationRequest
from server.engine.stats import EngineStats
from server.llama.backend import BackendInfo
from server.llama.model import LlamaModel
from server.metrics import make_registry
from server.model_pool import LoadedModel, ModelPool
from server.model_specs import ModelSpec
from server.runtime import Runtime
from server.settings import Settings

SCRIPT = "The fake engine says hello, one token at a time."


class FakeEngine:
    def __init__(self, model: LlamaModel, context_length: int = 2048, capacity: int = 64) -> None:
        self.model = model
        self.context_length = context_length
        self.capacity = capacity
        self.stats = EngineStats(n_cells=context_length, max_running=capacity)
        self.draining: str | None = None
        self.failure: str | None = None
        self.alive = True
        self.active_requests = 0  # answered at once: never any in flight
        self.submitted: list[GenerationRequest] = []
        # Set to fail every request the engine is given (an error event / a 500).
        self.fail_with: str | None = None
        self._script = model.tokenize(SCRIPT, add_special=False)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.alive = False

    def begin_drain(self, reason: str) -> None:
        self.draining = reason

    def abort_all(self, reason: str) -> None:
        pass

    def cancel(self, request: GenerationRequest) -> None:
        request.cancelled.set()

    def submit(self, request: GenerationRequest) -> None:
        n_prompt = len(request.prompt_tokens)
        if n_prompt + request.max_tokens > self.context_length:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_length} tokens."
            )
        if len(self.submitted) >= self.capacity:
            raise EngineBusy("the fake engine is full")
        self.submitted.append(request)
        if self.fail_with is not None:
            request.emit(self._last(request, "", [], FinishReason.ERROR, 0))
            return
        tokens = self._script[: request.max_tokens]
        for i, token in enumerate(tokens):
            text = self.model.token_bytes(token).decode("utf-8", errors="replace")
            logprobs = None
            if request.logprobs is not None:
                logprobs = [TokenLogprob(token, -0.5, [(token, -0.5)] * request.logprobs)]
            if i < len(tokens) - 1:
                request.emit(GenerationOutput(text, [token], logprobs=logprobs))
            else:
                reason = FinishReason.LENGTH if len(tokens) == request.max_tokens else "stop"
                out = self._last(request, text, [token], FinishReason(reason), len(tokens))
                out.logprobs = logprobs
                request.emit(out)

    def _last(
        self,
        request: GenerationRequest,
        text: str,
        tokens: list[int],
        reason: FinishReason,
        n_generated: int,
    ) -> GenerationOutput:
        return GenerationOutput(
            text,
            tokens,
            finish_reason=reason,
            prompt_tokens=len(request.prompt_tokens),
            completion_tokens=n_generated,
            error=self.fail_with,
        )


def fake_runtime(model: LlamaModel, settings: Settings, data_dir: Path) -> Runtime:
    """A Runtime over the real model and a FakeEngine; retrieval without an embedding
    model (its endpoints answer 503)."""
    engine = FakeEngine(model)
    retrieval = RetrievalService(Storage(data_dir), 1 << 20, None, ChunkingOptions())
    spec = ModelSpec(
        id="fake-model",
        path=model.path,
        pinned=True,
        default=True,
        source="default",
        names=frozenset({"fake-model"}),
    )

    def build(spec: ModelSpec) -> LoadedModel:
        prompts = PromptBuilder(model, ChatTemplate(CHATML_TEMPLATE))
        return LoadedModel(
            spec,
            model,
            engine,
            prompts,
            settings,
            retrieval,
            0,
            2048,
            0.0,  # type: ignore[arg-type]
        )

    models = ModelPool({spec.id: spec}, settings, BackendInfo("cpu"), retrieval, build=build)
    models.load_default()
    return Runtime(
        settings=settings,
        models=models,
        retrieval=retrieval,
        created=0,
        metrics=make_registry(models.engine_stats, None),
    )
