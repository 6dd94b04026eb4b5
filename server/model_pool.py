"""The chat models in memory: loaded on demand, unloaded when idle or when another needs the
room, never under a request.

Each loaded model has its own engine (context, thread, prefix cache, scheduler), so
requests to one model are never held up by another's load: a load runs in a worker thread
while the event loop keeps serving. Concurrent requests for a model being loaded wait for
that one load; loads of different models take turns, each making room for itself (waiting
up to ROOM_WAIT for a model to finish its requests). A request holds a lease on its model
from the moment it names it until its response is complete (streamed or not); a model
with a lease out, or used in the last IDLE_GRACE seconds, is never unloaded.

What makes room, in order: idle models past their keep_alive go (a background task looks
every second); loading one more than `models.max_loaded`, or past
`models.memory_budget_mb` (estimated: server/model_specs.py), unloads the least recently
used idle, unpinned models first; if none can go, the request gets a 503 that says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.service import RetrievalService
from server.chat.prompt import PromptBuilder
from server.chat.template import CHATML_TEMPLATE, ChatTemplate
from server.engine.engine import Engine, EngineConfig
from server.engine.stats import EngineStats
from server.errors import InvalidRequest, NotFound, RequestError, Unavailable
from server.host_resources import ram_budget, threads
from server.llama.backend import BackendInfo, layers_offloaded
from server.llama.model import LlamaModel
from server.model_specs import ModelSpec
from server.settings import Settings

logger = logging.getLogger("hearth")

REAP_INTERVAL = 1.0
# A model used this recently is not unloaded, even past a keep_alive of 0 or to make room:
# a request whose model has just loaded takes its lease a moment after the load completes.
IDLE_GRACE = 1.0
# How long a load waits for a loaded model to become idle (requests finishing) when it
# needs that model's room, before answering 503.
ROOM_WAIT = 30.0


class ModelUnavailable(Unavailable):
    """No room to load a model (every loaded one is busy or pinned), or its load failed:
    503, the request may be retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model", code="model_unavailable")


@dataclass(eq=False)
class LoadedModel:
    """One chat model in memory with its engine; what the chat service runs requests on
    (it has everything server/chat/deps.py's ChatRuntime names)."""

    spec: ModelSpec
    model: LlamaModel
    engine: Engine
    prompts: PromptBuilder
    settings: Settings
    retrieval: RetrievalService
    layers_on_gpu: int
    n_ctx: int
    load_seconds: float
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    leases: int = 0
    # Seconds to stay loaded when idle, as the last request that said so asked (Ollama's
    # keep_alive); None: the model's or the server's setting.
    keep_alive: float | None = None

    @property
    def model_id(self) -> str:
        return self.spec.id

    @property
    def model_aliases(self) -> tuple[str, ...]:
        return self.spec.aliases

    @property
    def template(self) -> ChatTemplate:
        return self.prompts.template

    @property
    def memory_estimate(self) -> int:
        return self.spec.memory_estimate(self.n_ctx)

    def busy(self) -> bool:
        return self.leases > 0 or self.engine.active_requests > 0

    def idle(self, now: float) -> bool:
        """Nobody is using it, and nobody has for IDLE_GRACE seconds."""
        return not self.busy() and now - self.last_used >= IDLE_GRACE


class Lease:
    """A request's hold on a loaded model, released (once) when its response is done.

    Used as `with lease:` around a handler's work: leaving the block releases it, unless
    the handler passed it on to a stream with `hand_over()`, whose returned callable the
    stream calls when it closes."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.model = loaded
        loaded.leases += 1
        self._held = True
        self._handed_over = False

    def release(self) -> None:
        if self._held:
            self._held = False
            self.model.leases -= 1
            self.model.last_used = time.monotonic()

    def hand_over(self) -> Callable[[], None]:
        self._handed_over = True
        return self.release

    def __enter__(self) -> LoadedModel:
        return self.model

    def __exit__(self, *exc: object) -> None:
        if not self._handed_over or exc[0] is not None:
            self.release()


@dataclass
class ModelPool:
    specs: dict[str, ModelSpec]
    settings: Settings
    backend: BackendInfo
    retrieval: RetrievalService
    # Builds a spec's engine (in a worker thread); tests of the pool may give their own.
    build: Callable[[ModelSpec], LoadedModel] | None = None
    loaded: dict[str, LoadedModel] = field(default_factory=dict)
    _loading: dict[str, asyncio.Future[LoadedModel]] = field(default_factory=dict)
    _reaper: asyncio.Task[None] | None = None
    _load_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Why a model's last load failed, by id (shown in listings until a load succeeds).
    failures: dict[str, str] = field(default_factory=dict)

    # --- names -------------------------------------------------------------------------

    @property
    def default(self) -> ModelSpec:
        return next(s for s in self.specs.values() if s.default)

    def find(self, name: str | None) -> ModelSpec:
        """The chat model a request names (None: the default); NotFound otherwise."""
        if name is None:
            return self.default
        for spec in self.specs.values():
            if name in spec.names:
                if spec.kind != "chat":
                    raise InvalidRequest(
                        f"'{name}' is an embedding model; it cannot chat or complete text.",
                        param="model",
                        code="model_not_supported",
                    )
                return spec
        served = ", ".join(repr(s.id) for s in self.specs.values() if s.kind == "chat")
        raise NotFound(
            f"The model '{name}' does not exist. This server serves {served}.",
            param="model",
            code="model_not_found",
        )

    # --- leases --------------------------------------------------------------------------

    async def acquire(self, name: str | None) -> Lease:
        """The named model, loaded (waiting for its load, starting one if needed)."""
        spec = self.find(name)
        if spec.problem is not None:
            raise InvalidRequest(
                f"The model '{spec.id}' cannot be served: {spec.problem}",
                param="model",
                code="model_unusable",
            )
        loaded = self.loaded.get(spec.id)
        if loaded is None:
            loaded = await self.load(spec.id)
        loaded.last_used = time.monotonic()
        return Lease(loaded)

    def engine_stats(self) -> list[tuple[str, EngineStats]]:
        """(id, engine counters) of every loaded model, for /metrics."""
        return [(m.model_id, m.engine.stats) for m in list(self.loaded.values())]

    def is_loading(self, model_id: str) -> bool:
        return model_id in self._loading

    def default_loaded(self) -> LoadedModel:
        return self.loaded[self.default.id]

    # --- loading and unloading -----------------------------------------------------------

    async def load(self, model_id: str) -> LoadedModel:
        if model_id in self.loaded:
            return self.loaded[model_id]
        pending = self._loading.get(model_id)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[model_id] = pending
            asyncio.get_running_loop().create_task(self._load(model_id, pending))
        return await asyncio.shield(pending)

    async def _load(self, model_id: str, done: asyncio.Future[LoadedModel]) -> None:
        spec = self.specs[model_id]
        try:
            # One load at a time: each counts the room the previous ones took.
            async with self._load_lock:
                await self._make_room(spec)
                build = self.build or self._build
                loaded = await asyncio.to_thread(build, spec)
                loaded.engine.start()
                self.loaded[model_id] = loaded
            self.failures.pop(model_id, None)
            logger.info("loaded %s in %.2f s", model_id, loaded.load_seconds)
            done.set_result(loaded)
        except Exception as e:
            reason = str(e) if isinstance(e, RequestError) else f"{type(e).__name__}: {e}"
            self.failures[model_id] = reason
            logger.error("loading %s failed: %s", model_id, reason)
            error = (
                e
                if isinstance(e, RequestError)
                else ModelUnavailable(f"The model '{model_id}' could not be loaded: {reason}")
            )
            done.set_exception(error)
            done.exception()  # retrieved: no "never retrieved" warning if nobody waits
        finally:
            self._loading.pop(model_id, None)

    def _fits(self, spec: ModelSpec, n_ctx: int) -> bool:
        limits = self.settings.models
        if len(self.loaded) + 1 > limits.max_loaded:
            return False
        budget = limits.memory_budget_mb << 20
        in_use = sum(m.memory_estimate for m in self.loaded.values())
        return not budget or in_use + spec.memory_estimate(n_ctx) <= budget

    async def _make_room(self, spec: ModelSpec) -> None:
        n_ctx = spec.n_ctx or self.settings.model.n_ctx
        budget = self.settings.models.memory_budget_mb << 20
        if budget and spec.memory_estimate(n_ctx) > budget:
            raise ModelUnavailable(
                f"The model '{spec.id}' needs about {spec.memory_estimate(n_ctx) >> 20} MiB "
                f"(file and KV cache), more than models.memory_budget_mb ({budget >> 20})."
            )
        deadline = time.monotonic() + ROOM_WAIT
        while not self._fits(spec, n_ctx):
            now = time.monotonic()
            idle = [m for m in self.loaded.values() if not m.spec.pinned and m.idle(now)]
            if not idle and now < deadline and any(not m.spec.pinned for m in self.loaded.values()):
                await asyncio.sleep(0.1)  # an unpinned model may finish its requests
                continue
            if not idle:
                raise ModelUnavailable(
                    f"Loading '{spec.id}' needs room (models.max_loaded = "
                    f"{self.settings.models.max_loaded}, models.memory_budget_mb = "
                    f"{self.settings.models.memory_budget_mb}) and every loaded model is "
                    "pinned or serving requests; retry shortly."
                )
            await self.unload(min(idle, key=lambda m: m.last_used).model_id)

    async def unload(self, model_id: str, wait: float = 0.0) -> bool:
        """Unload a model that has no requests (waiting up to `wait` seconds for them to
        finish); False if it is not loaded or still busy."""
        loaded = self.loaded.get(model_id)
        if loaded is None:
            return False
        deadline = time.monotonic() + wait
        while loaded.busy():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        del self.loaded[model_id]
        await asyncio.to_thread(_close, loaded)
        logger.info("unloaded %s", model_id)
        return True

    def keep_alive(self, loaded: LoadedModel) -> float:
        if loaded.keep_alive is not None:
            return loaded.keep_alive
        spec = loaded.spec
        return spec.keep_alive if spec.keep_alive is not None else self.settings.models.keep_alive

    async def reap_once(self) -> None:
        """Unload every model idle for longer than its keep_alive (negative: forever)."""
        now = time.monotonic()
        for loaded in list(self.loaded.values()):
            keep = self.keep_alive(loaded)
            if loaded.spec.pinned or keep < 0 or not loaded.idle(now):
                continue
            if now - loaded.last_used >= keep:
                await self.unload(loaded.model_id)

    # --- lifetime ------------------------------------------------------------------------

    def load_default(self) -> None:
        """At start-up, before the event loop: the configured model, as before."""
        spec = self.default
        if spec.problem is not None:
            raise RuntimeError(f"the chat model {spec.path} cannot be served: {spec.problem}")
        build = self.build or self._build
        self.loaded[spec.id] = build(spec)

    def start(self) -> None:
        for loaded in self.loaded.values():
            loaded.engine.start()
        self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="model reaper")

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            try:
                await self.reap_once()
            except Exception:
                logger.exception("unloading idle models failed")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for loaded in list(self.loaded.values()):
            loaded.engine.stop()
        for loaded in list(self.loaded.values()):
            loaded.model.close()
        self.loaded.clear()

    def problems(self) -> list[str]:
        out = []
        for loaded in self.loaded.values():
            engine = loaded.engine
            if engine.failure or not engine.alive:
                out.append(engine.failure or f"the engine of {loaded.model_id} is not running")
        if self._reaper is not None and self._reaper.done() and not self._reaper.cancelled():
            out.append(f"the model reaper stopped: {self._reaper.exception()!r}")
        return out

    # --- building an engine ----------------------------------------------------------------

    def _build(self, spec: ModelSpec) -> LoadedModel:
        started = time.monotonic()
        settings = self.settings
        ms, es, cs, sp = settings.model, settings.engine, settings.cache, settings.speculative
        gpu_layers = ms.n_gpu_layers if spec.n_gpu_layers is None else spec.n_gpu_layers
        model = LlamaModel(spec.path, n_gpu_layers=gpu_layers)
        try:
            layers_on_gpu = layers_offloaded(model.n_layer, gpu_layers, self.backend)
            n_ctx = spec.n_ctx or ms.n_ctx
            wanted = spec.context_length or (ms.context_length if spec.default else 0)
            context_length = min(wanted or min(n_ctx, model.info.n_ctx_train or n_ctx), n_ctx)
            persist = Path(cs.persist_dir).expanduser() if cs.persist_dir else None
            if persist is not None and not spec.default:
                persist = persist / spec.id.replace("/", "_")  # each model its own cache
            engine = Engine(
                model,
                EngineConfig(
                    n_ctx=n_ctx,
                    context_length=context_length,
                    max_running=spec.max_running or es.max_running,
                    max_waiting=es.max_waiting,
                    step_token_budget=es.step_token_budget,
                    n_batch=ms.n_batch,
                    n_ubatch=ms.n_ubatch,
                    n_threads=threads(settings),
                    cache_entries=cs.max_entries if cs.enabled else 0,
                    cache_cells=cs.max_cells or None,
                    cache_ram_bytes=ram_budget(cs.ram_mb) if cs.enabled else 0,
                    cache_dir=persist,
                    cache_dir_max_bytes=cs.persist_max_mb << 20,
                    on_gpu=layers_on_gpu > 0,
                    separate_prompts=(
                        layers_on_gpu == 0
                        if es.separate_prompts == "auto"
                        else es.separate_prompts == "on"
                    ),
                    max_draft=sp.max_draft if sp.enabled else 0,
                    max_draft_alone=sp.max_draft_alone,
                    draft_ngram_max=sp.ngram_max,
                    draft_ngram_min=sp.ngram_min,
                ),
            )
            prompts = PromptBuilder(model, _template(spec, model))
        except Exception:
            model.close()
            raise
        logger.info(
            "%s (%s): %d KV cells, %d tokens per request, %d parallel sequences",
            spec.id,
            model.info.description,
            engine.ctx.n_ctx,
            engine.context_length,
            engine.config.max_running,
        )
        return LoadedModel(
            spec=spec,
            model=model,
            engine=engine,
            prompts=prompts,
            settings=settings,
            retrieval=self.retrieval,
            layers_on_gpu=layers_on_gpu,
            n_ctx=n_ctx,
            load_seconds=time.monotonic() - started,
        )


def _close(loaded: LoadedModel) -> None:
    loaded.engine.stop()
    loaded.model.close()


def _template(spec: ModelSpec, model: LlamaModel) -> ChatTemplate:
    source = spec.chat_template or model.metadata("tokenizer.chat_template")
    if not source:
        logger.warning("%s has no chat template; using ChatML", model.path.name)
        source = CHATML_TEMPLATE
    return ChatTemplate(
        source,
        bos_token=model.token_text(model.bos_token),
        eos_token=model.token_text(model.eos_token),
    )
