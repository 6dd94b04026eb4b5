"""The composition root: everything a running server holds, built in one place and closed
in the reverse order.

`Runtime.load` builds the chat model and its engine, the prompt builder, the embedder,
retrieval (files, vector stores, the ingestion worker), the watched folder, the responses
store and the metrics registry. `start` starts their threads and tasks; `stop` ends them,
newest first, and frees the models last, so no thread ever calls into a freed model. The
HTTP app receives a Runtime and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from retrieval.ingestion import ChunkingOptions
from retrieval.service import RetrievalService
from retrieval.watcher import FolderWatcher
from server.chat.prompt import PromptBuilder
from server.chat.response_store import ResponseStore
from server.chat.template import CHATML_TEMPLATE, ChatTemplate
from server.engine.embedder import Embedder
from server.engine.engine import Engine, EngineConfig
from server.engine.reranker import Reranker
from server.llama.backend import BackendInfo, backend_info, layers_offloaded
from server.llama.model import LlamaModel
from server.metrics import make_registry
from server.model_files import (
    DEFAULT_EMBEDDING_NAME,
    packaged_chat_model,
    resolve_chat_model,
    resolve_embedding_model,
)
from server.settings import Settings

logger = logging.getLogger("hearth")


@dataclass
class Runtime:
    settings: Settings
    model: LlamaModel
    model_id: str
    prompts: PromptBuilder
    engine: Engine
    retrieval: RetrievalService
    created: int
    embedder: Embedder | None = None
    embedding_model_id: str = ""
    reranker: Reranker | None = None
    reranker_model_id: str = ""
    # What llama.cpp runs on (/health; the start-up line says it too).
    backend: BackendInfo = field(default_factory=lambda: BackendInfo("cpu"))
    layers_on_gpu: int = 0
    # Other ids requests may name for the chat model: the packaged model's own id while
    # its faster re-quantized form is served (clients written for it keep working).
    model_aliases: tuple[str, ...] = ()
    watcher: FolderWatcher | None = None
    responses: ResponseStore = field(default_factory=ResponseStore)  # previous_response_id
    metrics: CollectorRegistry = field(default_factory=CollectorRegistry)
    _watching: asyncio.Task[None] | None = None

    @classmethod
    def load(cls, settings: Settings) -> Runtime:
        backend = backend_info()
        model, model_id, aliases, engine, layers_on_gpu = _chat_engine(settings, backend)
        _log_backend(backend, layers_on_gpu, model.n_layer)
        embedder, embedding_model_id = _embedder(settings)
        reranker, reranker_model_id = _reranker(settings)
        data_dir = settings.storage.resolved_data_dir()
        rs = settings.retrieval
        retrieval = RetrievalService(
            data_dir,
            rs.lancedb_uri,
            rs.max_upload_mb << 20,
            embedder,
            ChunkingOptions(rs.chunk_tokens, rs.chunk_overlap),
            rs.parse_timeout,
            rs.max_attempts,
            reranker,
            rs.rerank_candidates,
        )
        watcher = None
        if rs.watch_dir and retrieval.enabled:
            folder = Path(rs.watch_dir).expanduser()
            watcher = FolderWatcher(
                retrieval, folder, rs.watch_store, rs.watch_interval, data_dir, rs.watch_symlinks
            )
        return cls(
            settings=settings,
            model=model,
            model_id=model_id,
            model_aliases=aliases,
            prompts=PromptBuilder(model, _template(settings, model)),
            engine=engine,
            retrieval=retrieval,
            created=int(time.time()),
            embedder=embedder,
            embedding_model_id=embedding_model_id,
            reranker=reranker,
            reranker_model_id=reranker_model_id,
            backend=backend,
            layers_on_gpu=layers_on_gpu,
            watcher=watcher,
            metrics=make_registry(engine.stats, embedder),
        )

    @property
    def template(self) -> ChatTemplate:
        return self.prompts.template

    async def start(self) -> None:
        """Start the engine threads, then the background tasks (on the running loop)."""
        self.engine.start()
        if self.embedder is not None:
            self.embedder.start()
        if self.reranker is not None:
            self.reranker.start()
        self.retrieval.start()
        if self.watcher is not None:
            self._watching = asyncio.get_running_loop().create_task(
                self.watcher.run(), name="the folder watcher"
            )

    async def stop(self) -> None:
        """Everything `start` started, newest first; the models are freed last."""
        if self._watching is not None and self.watcher is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watching
            await self.watcher.stop()
            self.watcher.close()
        await self.retrieval.stop()
        self.engine.stop()
        if self.reranker is not None:
            self.reranker.stop()
            self.reranker.model.close()
        if self.embedder is not None:
            self.embedder.stop()
            self.embedder.model.close()
        self.model.close()

    def problems(self) -> list[str]:
        """Why the server cannot serve everything it should (empty: it can)."""
        out = []
        # failure is set before a dying thread answers its requests (and before it ends).
        if self.engine.failure or not self.engine.alive:
            out.append(self.engine.failure or "the engine is not running")
        embedder = self.embedder
        if embedder is not None and (embedder.failure or not embedder.alive):
            out.append(embedder.failure or "the embedding engine is not running")
        reranker = self.reranker
        if reranker is not None and (reranker.failure or not reranker.alive):
            out.append(reranker.failure or "the reranker is not running")
        out += self.retrieval.problems()
        task = self._watching
        if task is not None and task.done() and not task.cancelled():
            out.append(f"the folder watcher stopped: {task.exception()!r}")
        return out


def _chat_engine(
    settings: Settings, backend: BackendInfo
) -> tuple[LlamaModel, str, tuple[str, ...], Engine, int]:
    """The chat model and its engine, its ids, and how many of its layers run on a GPU."""
    path = resolve_chat_model(settings.model.path, settings.storage.resolved_data_dir())
    model = LlamaModel(path, n_gpu_layers=settings.model.n_gpu_layers)
    layers_on_gpu = layers_offloaded(model.n_layer, settings.model.n_gpu_layers, backend)
    ms, es, cs = settings.model, settings.engine, settings.cache
    context_length = ms.context_length or min(ms.n_ctx, model.info.n_ctx_train or ms.n_ctx)
    engine = Engine(
        model,
        EngineConfig(
            n_ctx=ms.n_ctx,
            context_length=context_length,
            max_running=es.max_running,
            max_waiting=es.max_waiting,
            step_token_budget=es.step_token_budget,
            n_batch=ms.n_batch,
            n_ubatch=ms.n_ubatch,
            n_threads=_threads(settings),
            cache_entries=cs.max_entries if cs.enabled else 0,
            cache_cells=cs.max_cells or None,
            cache_ram_bytes=_ram_budget(cs.ram_mb) if cs.enabled else 0,
            cache_dir=Path(cs.persist_dir).expanduser() if cs.persist_dir else None,
            cache_dir_max_bytes=cs.persist_max_mb << 20,
            on_gpu=layers_on_gpu > 0,
        ),
    )
    model_id = ms.alias or path.name.removesuffix(".gguf")
    aliases: tuple[str, ...] = ()
    if not ms.path and path != (original := packaged_chat_model()):
        aliases = (original.name.removesuffix(".gguf"),)
    logger.info(
        "loaded %s (%s): %d KV cells, %d tokens per request, %d parallel sequences",
        model_id,
        model.info.description,
        engine.ctx.n_ctx,
        engine.context_length,
        es.max_running,
    )
    return model, model_id, aliases, engine, layers_on_gpu


def _log_backend(backend: BackendInfo, layers_on_gpu: int, n_layer: int) -> None:
    if backend.warning:
        logger.warning(backend.warning)
    gpus = ", ".join(d.description or d.name for d in backend.gpus)
    if gpus:
        logger.info(
            "backend %s: %s; %d/%d layers on the GPU",
            backend.backend,
            gpus,
            layers_on_gpu,
            n_layer + 1,
        )
    else:
        cpu = next((d.description for d in backend.devices if d.kind == "cpu"), "")
        logger.info("backend cpu%s", f": {cpu}" if cpu else "")


def _template(settings: Settings, model: LlamaModel) -> ChatTemplate:
    source = settings.model.chat_template or model.metadata("tokenizer.chat_template")
    if not source:
        logger.warning("%s has no chat template; using ChatML", model.path.name)
        source = CHATML_TEMPLATE
    return ChatTemplate(
        source,
        bos_token=model.token_text(model.bos_token),
        eos_token=model.token_text(model.eos_token),
    )


def _embedder(settings: Settings) -> tuple[Embedder | None, str]:
    es = settings.embedding
    if not es.enabled:
        return None, ""
    path = resolve_embedding_model(es.path, settings.storage.resolved_data_dir())
    model = LlamaModel(path, n_gpu_layers=settings.model.n_gpu_layers)
    embedder = Embedder(model, es.n_ctx, es.n_seq_max, _threads(settings))
    default_name = DEFAULT_EMBEDDING_NAME if not es.path else path.name.removesuffix(".gguf")
    model_id = es.alias or default_name
    logger.info("loaded embedding model %s (%d dimensions)", model_id, embedder.dim)
    return embedder, model_id


def _reranker(settings: Settings) -> tuple[Reranker | None, str]:
    rs = settings.retrieval
    if not rs.rerank_model:
        return None, ""
    path = Path(rs.rerank_model).expanduser()
    model = LlamaModel(path, n_gpu_layers=settings.model.n_gpu_layers)
    try:
        reranker = Reranker(model, rs.rerank_n_ctx, rs.rerank_n_seq_max, _threads(settings))
    except Exception:
        model.close()
        raise
    model_id = path.name.removesuffix(".gguf")
    logger.info("loaded reranker %s (up to %d tokens a pair)", model_id, reranker.max_tokens)
    return reranker, model_id


def _ram_budget(ram_mb: int) -> int:
    """Bytes for the prefix cache's host tier: as configured, or a quarter of the memory
    available now, at most 4 GiB."""
    if ram_mb >= 0:
        return ram_mb << 20
    available = _available_memory()
    return min(available // 4, 4 << 30) if available else 512 << 20


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # elsewhere (macOS): the physical memory
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _threads(settings: Settings) -> int:
    return settings.model.n_threads or os.cpu_count() or 1
