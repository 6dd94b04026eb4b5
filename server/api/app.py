"""The Starlette application: routes, error handlers, auth, CORS and the engine's lifetime."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from retrieval.ingestion import ChunkingOptions
from retrieval.service import Retrieval
from retrieval.watcher import FolderWatcher
from server.api import responses
from server.api import vector_stores as vs
from server.api.chat import chat_completions
from server.api.chat_page import chat_page
from server.api.completions import completions
from server.api.embeddings import embeddings
from server.api.errors import (
    APIError,
    handle_api_error,
    handle_http_exception,
    handle_unexpected,
)
from server.api.files import create_file, delete_file, file_content, list_files, retrieve_file
from server.api.metrics import make_registry, metrics
from server.api.responses.store import ResponseStore
from server.api.tokenize import detokenize, tokenize
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
    return cards


async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": _model_cards(request.app.state.runtime)})


async def retrieve_model(request: Request) -> Response:
    wanted = request.path_params["model"]
    for card in _model_cards(request.app.state.runtime):
        if card["id"] == wanted:
            return JSONResponse({k: v for k, v in card.items() if k != "meta"})
    raise APIError(
        404, f"The model '{wanted}' does not exist", param="model", code="model_not_found"
    )


async def health(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    return JSONResponse(
        {"status": "ok", "model": runtime.model_id, "engine": runtime.engine.stats.snapshot()}
    )


async def stats(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    body: dict[str, object] = runtime.engine.stats.snapshot()
    if runtime.embedder is not None:
        body["embeddings"] = asdict(runtime.embedder.stats)
    return JSONResponse(body)


class BearerAuth:
    """When an API key is configured, /v1/* needs `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            got = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                error = APIError(401, "Incorrect API key provided.", code="invalid_api_key")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _watcher(runtime: Runtime, retrieval: Retrieval) -> FolderWatcher | None:
    rs = runtime.settings.retrieval
    if not rs.watch_dir:
        return None
    return FolderWatcher(
        retrieval,
        Path(rs.watch_dir).expanduser(),
        rs.watch_store,
        rs.watch_interval,
        runtime.settings.storage.resolved_data_dir(),
    )


def create_app(runtime: Runtime) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime.start()
        app.state.retrieval.start(_watcher(runtime, app.state.retrieval))
        try:
            yield
        finally:
            await app.state.retrieval.stop()
            runtime.close()

    routes = [
        Route("/", chat_page, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/responses", responses.create_response, methods=["POST"]),
        Route("/v1/responses/{response_id}", responses.get_response, methods=["GET"]),
        Route("/v1/responses/{response_id}", responses.delete_response, methods=["DELETE"]),
        Route("/v1/files", create_file, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", retrieve_file, methods=["GET"]),
        Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
        Route("/v1/vector_stores", vs.create_store, methods=["POST"]),
        Route("/v1/vector_stores", vs.list_stores, methods=["GET"]),
        Route("/v1/vector_stores/{store_id}", vs.retrieve_store, methods=["GET"]),
        Route("/v1/vector_stores/{store_id}", vs.modify_store, methods=["POST"]),
        Route("/v1/vector_stores/{store_id}", vs.delete_store, methods=["DELETE"]),
        Route("/v1/vector_stores/{store_id}/files", vs.attach_file, methods=["POST"]),
        Route("/v1/vector_stores/{store_id}/files", vs.list_store_files, methods=["GET"]),
        Route(
            "/v1/vector_stores/{store_id}/files/{file_id}", vs.retrieve_store_file, methods=["GET"]
        ),
        Route("/v1/vector_stores/{store_id}/files/{file_id}", vs.detach_file, methods=["DELETE"]),
        Route("/v1/vector_stores/{store_id}/search", vs.search_store, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    middleware = [
        Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"]),
    ]
    if runtime.settings.server.api_key:
        middleware.append(Middleware(BearerAuth, api_key=runtime.settings.server.api_key))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            APIError: handle_api_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
    )
    app.state.runtime = runtime
    app.state.responses = ResponseStore()  # for previous_response_id
    app.state.metrics = make_registry(runtime)
    settings = runtime.settings
    app.state.retrieval = Retrieval(
        settings.storage.resolved_data_dir(),
        settings.retrieval.lancedb_uri,
        settings.retrieval.max_upload_mb << 20,
        runtime.embedder,
        ChunkingOptions(settings.retrieval.chunk_tokens, settings.retrieval.chunk_overlap),
    )
    return app
