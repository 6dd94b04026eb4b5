"""Ollama's model endpoints over the models this server has loaded: /api/tags, /api/show,
/api/ps and /api/version; and the model-management calls (pull, push, create, copy,
delete) answered with a clear refusal: Hearth serves local GGUF files it is configured
with and downloads nothing.

Ollama names models `name:tag`; here a model's name is its id (as /v1/models lists it),
and `:latest` is the only tag, so `name` and `name:latest` are the same model.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.body import read_json, validate_body
from server.api.errors import APIError
from server.api.ollama.errors import ollama_errors
from server.api.ollama.wire import OLLAMA_DEFAULTS, ModelRequest
from server.api.openapi import documented
from server.llama.model import LlamaModel
from server.model_pool import LoadedModel
from server.model_specs import ModelSpec, read_header
from server.runtime import Runtime

FOREVER = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
# The Ollama API version these endpoints follow (GET /api/version): clients check it
# before using newer features (tools, structured outputs, /api/embed).
OLLAMA_API_VERSION = "0.12.0"
TAG = ":latest"


@dataclass(frozen=True)
class ServedModel:
    id: str
    kind: str  # chat | embedding | rerank
    path: Path
    size: int
    family: str
    quantization: str
    n_params: int
    n_ctx_train: int
    aliases: tuple[str, ...] = ()
    loaded: LoadedModel | None = None  # a chat model's engine, while it is loaded
    pinned: bool = True  # the embedding model and the reranker stay loaded

    @property
    def name(self) -> str:
        return self.id + TAG

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": parameter_size(self.n_params),
            "quantization_level": self.quantization,
        }

    def modified_at(self) -> str:
        mtime = self.path.stat().st_mtime
        return iso_time(dt.datetime.fromtimestamp(mtime, dt.UTC))

    def digest(self) -> str:
        """A stable identity for the file (path, size, modification time): Ollama's digest
        names a manifest, which a GGUF on disk does not have; hashing 100s of MB is slow."""
        stat = self.path.stat()
        key = f"{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        return hashlib.sha256(key.encode()).hexdigest()

    def entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": self.modified_at(),
            "size": self.size,
            "digest": self.digest(),
            "details": self.details(),
        }


def iso_time(when: dt.datetime | None = None) -> str:
    """RFC 3339 in UTC, as Ollama writes created_at."""
    when = when or dt.datetime.now(dt.UTC)
    return when.isoformat().replace("+00:00", "Z")


def parameter_size(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _from_spec(spec: ModelSpec, loaded: LoadedModel | None) -> ServedModel:
    return ServedModel(
        id=spec.id,
        kind="chat",
        path=spec.path,
        size=spec.size_bytes,
        family=spec.architecture or "unknown",
        quantization=spec.quantization,
        n_params=spec.n_params,
        n_ctx_train=spec.n_ctx_train,
        aliases=spec.aliases,
        loaded=loaded,
        pinned=spec.pinned,
    )


def _from_model(model_id: str, kind: str, model: LlamaModel) -> ServedModel:
    info = model.info
    return ServedModel(
        id=model_id,
        kind=kind,
        path=model.path,
        size=info.size_bytes,
        family=model.metadata("general.architecture") or "unknown",
        quantization=info.description.rsplit(" ", 1)[-1],
        n_params=info.n_params,
        n_ctx_train=info.n_ctx_train,
    )


def served_models(runtime: Runtime) -> list[ServedModel]:
    """The chat models that can be served (loaded or not), the embedding model, the
    reranker."""
    pool = runtime.models
    models = [
        _from_spec(spec, pool.loaded.get(spec.id))
        for spec in pool.specs.values()
        if spec.kind == "chat" and spec.problem is None
    ]
    if runtime.embedder is not None:
        models.append(_from_model(runtime.embedding_model_id, "embedding", runtime.embedder.model))
    if runtime.reranker is not None:
        models.append(_from_model(runtime.reranker_model_id, "rerank", runtime.reranker.model))
    return models


def find_model(runtime: Runtime, name: str, kind: str | None = None) -> ServedModel:
    """The served model a request names (`id`, `id:latest`, or an alias of the chat model);
    404 in Ollama's words otherwise, 400 when it cannot do what `kind` asks."""
    bare = name.removesuffix(TAG)
    for model in served_models(runtime):
        if bare == model.id or bare in model.aliases:
            if kind is not None and model.kind != kind:
                does = {"chat": "generate", "embedding": "embeddings"}.get(kind, kind)
                raise APIError(400, f'"{name}" does not support {does}', param="model")
            return model
    unusable = runtime.models.specs.get(bare)
    if unusable is not None and unusable.problem is not None:
        raise APIError(400, f'model "{name}" cannot be served: {unusable.problem}', "model")
    available = ", ".join(m.name for m in served_models(runtime))
    raise APIError(404, f'model "{name}" not found; this server serves {available}', param="model")


@documented("Ollama: the API version")
@ollama_errors
async def version(request: Request) -> Response:
    return JSONResponse({"version": OLLAMA_API_VERSION})


@documented("Ollama: list models")
@ollama_errors
async def tags(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    return JSONResponse({"models": [m.entry() for m in served_models(runtime)]})


@documented("Ollama: loaded models")
@ollama_errors
async def running(request: Request) -> Response:
    """/api/ps: the models in memory, with (Hearth's additions) the requests each is
    serving and how long it has been idle."""
    runtime: Runtime = request.app.state.runtime
    on_gpu = runtime.layers_on_gpu > 0
    now = time.monotonic()
    models = []
    for m in served_models(runtime):
        if m.kind == "chat" and m.loaded is None:
            continue
        entry = m.entry()
        del entry["modified_at"]
        expires, running_now, idle = FOREVER, 0, 0.0
        if m.loaded is not None:
            loaded = m.loaded
            keep = runtime.models.keep_alive(loaded)
            idle = 0.0 if loaded.busy() else now - loaded.last_used
            running_now = loaded.engine.active_requests
            if not m.pinned and keep >= 0:
                expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=max(0.0, keep - idle))
            entry["size"] = loaded.memory_estimate
        models.append(
            {
                **entry,
                "expires_at": iso_time(expires),
                "size_vram": entry["size"] if on_gpu else 0,
                "context_length": _context_length(runtime, m),
                "requests_running": running_now,
                "idle_seconds": round(idle, 1),
            }
        )
    return JSONResponse({"models": models})


def _context_length(runtime: Runtime, m: ServedModel) -> int:
    if m.loaded is not None:
        return m.loaded.engine.context_length
    if m.kind == "embedding" and runtime.embedder is not None:
        return runtime.embedder.max_tokens
    if m.kind == "rerank" and runtime.reranker is not None:
        return runtime.reranker.max_tokens
    return m.n_ctx_train


@documented("Ollama: show a model", body=ModelRequest)
@ollama_errors
async def show(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = validate_body(ModelRequest, await read_json(request))
    if not req.wanted:
        raise APIError(400, "model is required", param="model")
    m = find_model(runtime, req.wanted)
    family = m.family
    model_info: dict[str, Any] = {
        "general.architecture": family,
        "general.parameter_count": m.n_params,
        f"{family}.context_length": m.n_ctx_train,
    }
    metadata, _ = await asyncio.to_thread(read_header, m.path)
    body: dict[str, Any] = {
        "license": str(metadata.get("general.license") or ""),
        "modelfile": f"# Served by Hearth\nFROM {m.path}\n",
        "details": m.details(),
        "model_info": model_info,
        "modified_at": m.modified_at(),
    }
    if m.kind == "chat":
        template = m.loaded.template.source if m.loaded else metadata.get("tokenizer.chat_template")
        body["template"] = str(template or "")
        body["parameters"] = "\n".join(f"{k:<16}{v}" for k, v in OLLAMA_DEFAULTS.items())
        body["capabilities"] = ["completion", "tools"]
    else:
        body["capabilities"] = ["embedding"] if m.kind == "embedding" else []
    return JSONResponse(body)


@documented("Ollama: model management (refused: Hearth downloads nothing)", body=ModelRequest)
@ollama_errors
async def refused(request: Request) -> Response:
    """pull, push, create, copy, delete: Hearth does not manage a model library."""
    action = request.url.path.rsplit("/", 1)[-1]
    raise APIError(
        400,
        f"Hearth does not {action} models: it serves the local GGUF files in its "
        "configuration (model.path, embedding.path), and downloads nothing. Point "
        "model.path at a GGUF file and restart the server to use another model.",
    )
