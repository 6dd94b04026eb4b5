"""Ollama's model endpoints over the models this server has loaded: /api/tags, /api/show,
/api/ps and /api/version; and the model-management calls (pull, push, create, copy,
delete) answered with a clear refusal: Hearth serves local GGUF files it is configured
with and downloads nothing.

Ollama names models `name:tag`; here a model's name is its id (as /v1/models lists it),
and `:latest` is the only tag, so `name` and `name:latest` are the same model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.body import read_json, validate_body
from server.api.errors import APIError
from server.api.ollama.errors import ollama_errors
from server.api.ollama.wire import OLLAMA_DEFAULTS, ModelRequest
from server.api.openapi import documented
from server.llama.model import LlamaModel
from server.runtime import Runtime

# The Ollama API version these endpoints follow (GET /api/version): clients check it
# before using newer features (tools, structured outputs, /api/embed).
OLLAMA_API_VERSION = "0.12.0"
TAG = ":latest"


@dataclass(frozen=True)
class ServedModel:
    id: str
    kind: str  # chat | embedding | rerank
    model: LlamaModel
    context_length: int

    @property
    def name(self) -> str:
        return self.id + TAG

    def details(self) -> dict[str, Any]:
        family = self.model.metadata("general.architecture") or "unknown"
        quantization = self.model.info.description.rsplit(" ", 1)[-1]
        return {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": parameter_size(self.model.info.n_params),
            "quantization_level": quantization,
        }

    def modified_at(self) -> str:
        mtime = self.model.path.stat().st_mtime
        return iso_time(dt.datetime.fromtimestamp(mtime, dt.UTC))

    def digest(self) -> str:
        """A stable identity for the file (path, size, modification time): Ollama's digest
        names a manifest, which a GGUF on disk does not have; hashing 100s of MB is slow."""
        stat = self.model.path.stat()
        key = f"{self.model.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        return hashlib.sha256(key.encode()).hexdigest()

    def entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": self.modified_at(),
            "size": self.model.info.size_bytes,
            "digest": self.digest(),
            "details": self.details(),
        }


def iso_time(when: dt.datetime | None = None) -> str:
    """RFC 3339 in UTC, as Ollama writes created_at."""
    when = when or dt.datetime.now(dt.UTC)
    return when.isoformat().replace("+00:00", "Z")


def parameter_size(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def served_models(runtime: Runtime) -> list[ServedModel]:
    models = [ServedModel(runtime.model_id, "chat", runtime.model, runtime.engine.context_length)]
    if runtime.embedder is not None:
        e = runtime.embedder
        models.append(ServedModel(runtime.embedding_model_id, "embedding", e.model, e.max_tokens))
    if runtime.reranker is not None:
        r = runtime.reranker
        models.append(ServedModel(runtime.reranker_model_id, "rerank", r.model, r.max_tokens))
    return models


def find_model(runtime: Runtime, name: str, kind: str | None = None) -> ServedModel:
    """The served model a request names (`id`, `id:latest`, or an alias of the chat model);
    404 in Ollama's words otherwise, 400 when it cannot do what `kind` asks."""
    bare = name.removesuffix(TAG)
    for model in served_models(runtime):
        names = {model.id}
        if model.kind == "chat":
            names.update(runtime.model_aliases)
        if bare in names:
            if kind is not None and model.kind != kind:
                does = {"chat": "generate", "embedding": "embeddings"}.get(kind, kind)
                raise APIError(400, f'"{name}" does not support {does}', param="model")
            return model
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
    """/api/ps: every served model stays loaded for the server's lifetime."""
    runtime: Runtime = request.app.state.runtime
    on_gpu = runtime.layers_on_gpu > 0
    forever = iso_time(dt.datetime(9999, 12, 31, tzinfo=dt.UTC))
    models = []
    for m in served_models(runtime):
        entry = m.entry()
        del entry["modified_at"]
        size = m.model.info.size_bytes
        models.append(
            {
                **entry,
                "expires_at": forever,
                "size_vram": size if on_gpu else 0,
                "context_length": m.context_length,
            }
        )
    return JSONResponse({"models": models})


@documented("Ollama: show a model", body=ModelRequest)
@ollama_errors
async def show(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = validate_body(ModelRequest, await read_json(request))
    if not req.wanted:
        raise APIError(400, "model is required", param="model")
    m = find_model(runtime, req.wanted)
    info = m.model.info
    family = m.details()["family"]
    model_info: dict[str, Any] = {
        "general.architecture": family,
        "general.parameter_count": info.n_params,
        f"{family}.context_length": info.n_ctx_train,
        f"{family}.vocab_size": info.n_vocab,
    }
    body: dict[str, Any] = {
        "license": m.model.metadata("general.license") or "",
        "modelfile": f"# Served by Hearth\nFROM {m.model.path}\n",
        "details": m.details(),
        "model_info": model_info,
        "modified_at": m.modified_at(),
    }
    if m.kind == "chat":
        body["template"] = runtime.template.source
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
