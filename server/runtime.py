"""The composition root: everything a running server holds, built in one place and closed
in the reverse order.

`Runtime.load` builds the embedder, retrieval (files, vector stores, the ingestion worker),
the chat models (the default one loaded with its engine, the others when a request names
them: model_pool.py), the watched folder, the responses store and the metrics registry.
`start` starts their threads and tasks; `stop` ends them, newest first, and frees the
models last, so no thread ever calls into a freed model. The HTTP app receives a Runtime
and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from retrieval.ingestion import ChunkingOptions
from retrieval.ray_ingestion import EmbedderSpec, RayIndexer
from retrieval.s3 import S3Options
from retrieval.service import RetrievalService
from retrieval.storage import Storage
from retrieval.watcher import FolderWatcher
from server.batch.records import BatchRecords
from server.batch.runner import BatchRunner
from server.chat.conversation_store import ConversationStore
from server.chat.kept_on_disk import KeptOnDisk
from server.chat.prompt import PromptBuilder
from server.chat.response_store import ResponseStore
from server.engine.embedder import Embedder
from server.engine.engine import Engine
from server.engine.reranker import Reranker
from server.host_resources import threads
from server.ids import replica_name
from server.llama.backend import BackendInfo, backend_info
from server.llama.model import LlamaModel
from server.metrics import make_registry
from server.model_files import (
    DEFAULT_EMBEDDING_NAME,
    resolve_embedding_model,
)
from server.model_pool import LoadedModel, ModelPool
from server.model_specs import discover
from server.settings import Settings

logger = logging.getLogger("hearth")


@dataclass
class Runtime:
    settings: Settings
    # The chat models: the default (loaded at start-up, pinned) and any others, loaded
    # when a request names them (server/model_pool.py).
    models: ModelPool
    retrieval: RetrievalService
    created: int
    embedder: Embedder | None = None
    embedding_model_id: str = ""
    reranker: Reranker | None = None
    reranker_model_id: str = ""
    # What llama.cpp runs on (/health; the start-up line says it too).
    backend: BackendInfo = field(default_factory=lambda: BackendInfo("cpu"))
    watcher: FolderWatcher | None = None
    responses: ResponseStore = field(default_factory=ResponseStore)  # previous_response_id
    conversations: ConversationStore = field(default_factory=ConversationStore)
    # Chat completions made with `store: true` (body, and the request's messages as items).
    chat_completions: ResponseStore = field(default_factory=ResponseStore)
    metrics: CollectorRegistry = field(default_factory=CollectorRegistry)
    # The Batch API's runner (/v1/batches); it runs through the app, which starts it.
    batches: BatchRunner = field(init=False)
    _watching: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        records = BatchRecords(self.settings.storage.resolved_data_dir() / "batches")
        # Half the sequences at most, so interactive requests keep a share of the engine.
        concurrency = max(1, self.settings.engine.max_running // 2)
        api_key = self.settings.server.api_key
        self.batches = BatchRunner(records, self.retrieval.files, concurrency, api_key)

    @classmethod
    def load(cls, settings: Settings) -> Runtime:
        backend = backend_info()
        embedder, embedding_model_id = _embedder(settings)
        reranker, reranker_model_id = _reranker(settings)
        data_dir = settings.storage.resolved_data_dir()
        rs = settings.retrieval
        options = ChunkingOptions(rs.chunk_tokens, rs.chunk_overlap)
        remote = None
        if rs.ray_address and embedder is not None:
            remote = RayIndexer(
                storage_of(settings),
                embedder_spec(settings, rs.ray_workers),
                options,
                rs.ray_address,
                embedder.dim,
                rs.ray_workers,
                rs.parse_timeout,
            )
        retrieval = RetrievalService(
            storage_of(settings),
            rs.max_upload_mb << 20,
            embedder,
            options,
            rs.parse_timeout,
            rs.max_attempts,
            reranker,
            rs.rerank_candidates,
            remote,
        )
        models = ModelPool(discover(settings), settings, backend, retrieval)
        models.load_default()
        default = models.default_loaded()
        _log_backend(backend, default.layers_on_gpu, default.model.n_layer)
        others = [s.id for s in models.specs.values() if not s.default]
        if others:
            logger.info("also serving, loaded on demand: %s", ", ".join(others))
        watcher = None
        if rs.watch_dir and retrieval.enabled:
            folder = Path(rs.watch_dir).expanduser()
            watcher = FolderWatcher(
                retrieval, folder, rs.watch_store, rs.watch_interval, data_dir, rs.watch_symlinks
            )
        kept = _kept_stores(settings, data_dir)
        return cls(
            settings=settings,
            models=models,
            retrieval=retrieval,
            created=int(time.time()),
            **kept,
            embedder=embedder,
            embedding_model_id=embedding_model_id,
            reranker=reranker,
            reranker_model_id=reranker_model_id,
            backend=backend,
            watcher=watcher,
            metrics=make_registry(models.engine_stats, embedder),
        )

    # The default chat model: what requests naming no model, and the single-model parts
    # of the API (/health, /tokenize, the chat page), use.
    @property
    def default_model(self) -> LoadedModel:
        return self.models.default_loaded()

    @property
    def model(self) -> LlamaModel:
        return self.default_model.model

    @property
    def model_id(self) -> str:
        return self.models.default.id

    @property
    def model_aliases(self) -> tuple[str, ...]:
        """Other ids of the default model: the packaged model's own id while its faster
        re-quantized form is served (clients written for it keep working)."""
        return self.models.default.aliases

    @property
    def engine(self) -> Engine:
        return self.default_model.engine

    @property
    def prompts(self) -> PromptBuilder:
        return self.default_model.prompts

    @property
    def layers_on_gpu(self) -> int:
        return self.default_model.layers_on_gpu

    async def start(self) -> None:
        """Start the engine threads, then the background tasks (on the running loop)."""
        self.models.start()
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
        await self.models.stop()
        if self.reranker is not None:
            self.reranker.stop()
            self.reranker.model.close()
        if self.embedder is not None:
            self.embedder.stop()
            self.embedder.model.close()

    def problems(self) -> list[str]:
        """Why the server cannot serve everything it should (empty: it can)."""
        # failure is set before a dying thread answers its requests (and before it ends).
        out = self.models.problems()
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


def _kept_stores(settings: Settings, data_dir: Path) -> dict[str, Any]:
    """The stores of what clients keep on the server, written through to disk unless
    storage.keep_across_restarts is off (each replica of a cluster its own file: the ids
    it hands out name it)."""
    if not settings.storage.keep_across_restarts:
        return {}
    name = replica_name()
    disk = KeptOnDisk(data_dir / (f"kept-{name}.db" if name else "kept.db"))
    return {
        "responses": ResponseStore(disk=disk, kind="response"),
        "chat_completions": ResponseStore(disk=disk, kind="chat_completion"),
        "conversations": ConversationStore(disk=disk),
    }


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


def embedder_spec(settings: Settings, workers: int) -> EmbedderSpec:
    """How a Ray actor builds the configured embedder, `workers` of them sharing the
    threads."""
    es = settings.embedding
    return EmbedderSpec(
        str(resolve_embedding_model(es.path, settings.storage.resolved_data_dir())),
        es.n_ctx,
        es.n_seq_max,
        max(1, threads(settings) // workers),
        settings.model.n_gpu_layers,
    )


def storage_of(settings: Settings) -> Storage:
    """Where retrieval keeps things, from the [storage] and [retrieval] settings."""
    rs = settings.retrieval
    return Storage(
        settings.storage.resolved_data_dir(),
        rs.lancedb_uri,
        rs.database_url,
        rs.chunk_store,
        rs.files_uri,
        several_processes=settings.storage.several_processes,
        s3=S3Options.from_env(
            endpoint=rs.s3_endpoint,
            region=rs.s3_region,
            access_key_id=rs.s3_access_key_id,
            secret_access_key=rs.s3_secret_access_key,
        ),
    )


def _embedder(settings: Settings) -> tuple[Embedder | None, str]:
    es = settings.embedding
    if not es.enabled:
        return None, ""
    path = resolve_embedding_model(es.path, settings.storage.resolved_data_dir())
    model = LlamaModel(path, n_gpu_layers=settings.model.n_gpu_layers)
    embedder = Embedder(model, es.n_ctx, es.n_seq_max, threads(settings))
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
        reranker = Reranker(model, rs.rerank_n_ctx, rs.rerank_n_seq_max, threads(settings))
    except Exception:
        model.close()
        raise
    model_id = path.name.removesuffix(".gguf")
    logger.info("loaded reranker %s (up to %d tokens a pair)", model_id, reranker.max_tokens)
    return reranker, model_id
