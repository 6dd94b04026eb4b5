"""GET /v1/models and /v1/models/{id}: the chat model, the embedding model and the
reranker."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.errors import APIError
from server.api.openapi import documented
from server.runtime import Runtime


def _model_cards(runtime: Runtime) -> list[dict[str, object]]:
    info = runtime.model.info
    cards: list[dict[str, object]] = [
        {
            "id": runtime.model_id,
            "object": "model",
            "created": runtime.created,
            "owned_by": "hearth",
            "meta": {
                "kind": "chat",
                "path": str(info.path),
                "n_ctx_train": info.n_ctx_train,
                "context_length": runtime.engine.context_length,
                "n_vocab": info.n_vocab,
                "n_params": info.n_params,
                "size": info.size_bytes,
            },
        }
    ]
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
    return runtime.model_aliases if card["id"] == runtime.model_id else ()


@documented("List models")
async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": _model_cards(request.app.state.runtime)})


@documented("Retrieve a model")
async def retrieve_model(request: Request) -> Response:
    wanted = request.path_params["model"]
    runtime = request.app.state.runtime
    for card in _model_cards(runtime):
        if card["id"] == wanted or wanted in _aliases(runtime, card):
            return JSONResponse({**{k: v for k, v in card.items() if k != "meta"}, "id": wanted})
    raise APIError(
        404, f"The model '{wanted}' does not exist", param="model", code="model_not_found"
    )
