"""GET /v1/models and /v1/models/{id}: the chat models (loaded or not, and why one cannot
be served), the embedding model and the reranker; POST /models/load and /models/unload."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.body import read_json, validate_body
from server.api.errors import APIError
from server.api.openapi import documented
from server.model_specs import ModelSpec
from server.runtime import Runtime


def _status(runtime: Runtime, spec: ModelSpec) -> str:
    if spec.problem is not None:
        return "unusable"
    if spec.id in runtime.models.loaded:
        return "loaded"
    return "loading" if runtime.models.is_loading(spec.id) else "unloaded"


def chat_card(runtime: Runtime, spec: ModelSpec) -> dict[str, object]:
    loaded = runtime.models.loaded.get(spec.id)
    meta: dict[str, object] = {
        "kind": spec.kind,
        "path": str(spec.path),
        "status": _status(runtime, spec),
        "loaded": loaded is not None,
        "pinned": spec.pinned,
        "size": spec.size_bytes,
        "quantization": spec.quantization,
        "architecture": spec.architecture,
        "n_ctx_train": spec.n_ctx_train,
        "n_params": spec.n_params,
    }
    if spec.problem is not None:
        meta["problem"] = spec.problem
    failure = runtime.models.failures.get(spec.id)
    if failure is not None:
        meta["load_error"] = failure
    if loaded is not None:
        meta["context_length"] = loaded.engine.context_length
        meta["n_vocab"] = loaded.model.info.n_vocab
        meta["memory_estimate"] = loaded.memory_estimate
        meta["load_seconds"] = round(loaded.load_seconds, 3)
        meta["requests_running"] = loaded.engine.active_requests
    return {
        "id": spec.id,
        "object": "model",
        "created": runtime.created,
        "owned_by": "hearth",
        "meta": meta,
    }


def _model_cards(runtime: Runtime) -> list[dict[str, object]]:
    cards = [chat_card(runtime, spec) for spec in runtime.models.specs.values()]
    if runtime.embedder is not None:
        emb = runtime.embedder
        cards.append(
            {
                "id": runtime.embedding_model_id,
                "object": "model",
                "created": runtime.created,
                "owned_by": "hearth",
                "meta": {
                    "kind": "embedding",
                    "dimensions": emb.dim,
                    "context_length": emb.max_tokens,
                    "n_params": emb.model.info.n_params,
                    "size": emb.model.info.size_bytes,
                },
            }
        )
    if runtime.reranker is not None:
        rr = runtime.reranker
        cards.append(
            {
                "id": runtime.reranker_model_id,
                "object": "model",
                "created": runtime.created,
                "owned_by": "hearth",
                "meta": {
                    "kind": "rerank",
                    "context_length": rr.max_tokens,
                    "n_params": rr.model.info.n_params,
                    "size": rr.model.info.size_bytes,
                },
            }
        )
    return cards


def _aliases(runtime: Runtime, card: dict[str, object]) -> tuple[str, ...]:
    spec = runtime.models.specs.get(str(card["id"]))
    return spec.aliases if spec is not None else ()


def _anthropic(request: Request) -> bool:
    """Whether Anthropic's SDK asks (it sends anthropic-version on every request): its
    Models API lists chat models as {"type": "model", "id", "display_name", "created_at"}."""
    return "anthropic-version" in request.headers


def _anthropic_card(card: dict[str, object]) -> dict[str, object]:
    created = datetime.fromtimestamp(int(str(card["created"])), tz=UTC)
    return {
        **card,
        "type": "model",
        "display_name": card["id"],
        "created_at": created.isoformat().replace("+00:00", "Z"),
    }


@documented("List models")
async def list_models(request: Request) -> Response:
    cards = _model_cards(request.app.state.runtime)
    if _anthropic(request):
        chat = [_anthropic_card(c) for c in cards if c["meta"]["kind"] == "chat"]  # type: ignore[index]
        ids = [c["id"] for c in chat]
        return JSONResponse(
            {
                "object": "list",
                "data": chat,
                "has_more": False,
                "first_id": ids[0] if ids else None,
                "last_id": ids[-1] if ids else None,
            }
        )
    return JSONResponse({"object": "list", "data": cards})


@documented("Retrieve a model")
async def retrieve_model(request: Request) -> Response:
    wanted = request.path_params["model"]
    runtime = request.app.state.runtime
    for card in _model_cards(runtime):
        if card["id"] == wanted or wanted in _aliases(runtime, card):
            shown = {**{k: v for k, v in card.items() if k != "meta"}, "id": wanted}
            return JSONResponse(_anthropic_card(shown) if _anthropic(request) else shown)
    raise APIError(
        404, f"The model '{wanted}' does not exist", param="model", code="model_not_found"
    )


class ModelName(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)


@documented("Load a chat model (llama-server's router name)", body=ModelName)
async def load_model(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = validate_body(ModelName, await read_json(request))
    spec = runtime.models.find(req.model)
    with await runtime.models.acquire(req.model):
        pass
    return JSONResponse({"success": True, **chat_card(runtime, spec)})


@documented("Unload a chat model (llama-server's router name)", body=ModelName)
async def unload_model(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = validate_body(ModelName, await read_json(request))
    spec = runtime.models.find(req.model)
    if spec.pinned:
        raise APIError(
            400,
            f"'{spec.id}' is pinned{' (the default model)' if spec.default else ''}: it stays "
            "loaded.",
            param="model",
            code="model_pinned",
        )
    if spec.id in runtime.models.loaded and not await runtime.models.unload(spec.id):
        loaded = runtime.models.loaded[spec.id]
        raise APIError(
            409,
            f"'{spec.id}' is serving {loaded.engine.active_requests + loaded.leases} requests; "
            "it can be unloaded when they finish.",
            param="model",
            code="model_busy",
        )
    return JSONResponse({"success": True, **chat_card(runtime, spec)})
