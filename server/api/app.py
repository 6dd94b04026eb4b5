"""The Starlette application: routes, error handlers, auth, CORS and the engine's lifetime."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from retrieval.ingestion import ChunkingOptions
from retrieval.service import Retrieval
from retrieval.watcher import FolderWatcher
from server.api import responses
from server.api import vector_stores as vs
from server.api.auth import APIKeyAuth
from server.api.body import BodyLimit
from server.api.browser import BrowserGuard, HostPolicy, OriginPolicy
from server.api.chat import chat_completions
from server.api.chat_page import chat_page
from server.api.completions import completions
from server.api.embeddings import embeddings
from server.api.errors import (
    APIError,
    handle_api_error,
    handle_busy,
    handle_http_exception,
    handle_unavailable,
    handle_unexpected,
)
from server.api.files import create_file, delete_file, file_content, list_files, retrieve_file
from server.api.metrics import make_registry, metrics
from server.api.openapi import documented, openapi, openapi_document
from server.api.responses.store import ResponseStore
from server.api.tokenize import detokenize, tokenize
from server.engine.embedder import EmbedderBusy, EmbedderError
from server.runtime import Runtime
from server.settings import Settings


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


@documented("List models")
async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": _model_cards(request.app.state.runtime)})


@documented("Retrieve a model")
async def retrieve_model(request: Request) -> Response:
    wanted = request.path_params["model"]
    for card in _model_cards(request.app.state.runtime):
        if card["id"] == wanted:
            return JSONResponse({k: v for k, v in card.items() if k != "meta"})
    raise APIError(
        404, f"The model '{wanted}' does not exist", param="model", code="model_not_found"
    )


@documented("Liveness: 200 while everything runs, 503 with the reasons otherwise")
async def health(request: Request) -> Response:
    """200 while every engine thread and background task runs, else 503 with the reasons.
    Without the API key (when one is set) only the status is shown."""
    runtime: Runtime = request.app.state.runtime
    problems = runtime.problems() + request.app.state.retrieval.problems()
    body: dict[str, object] = {"status": "unavailable" if problems else "ok"}
    if problems:
        body["reasons"] = problems
    if getattr(request.state, "authenticated", True):
        body["model"] = runtime.model_id
        body["engine"] = runtime.engine.stats.snapshot()
    return JSONResponse(body, status_code=503 if problems else 200)


@documented("Engine and cache counters")
async def stats(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    body: dict[str, object] = runtime.engine.stats.snapshot()
    if runtime.embedder is not None:
        body["embeddings"] = asdict(runtime.embedder.stats)
    return JSONResponse(body)


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
        rs.watch_symlinks,
    )


def api_routes() -> list[Route]:
    """Every route the server answers (also what /openapi.json describes)."""
    return [
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
        Route("/openapi.json", openapi, methods=["GET"]),
    ]


def _middleware(settings: Settings) -> list[Middleware]:
    """Outermost first: who may ask (host, origin, CORS), how much they may send, and
    whether they hold the key."""
    server = settings.server
    origins = OriginPolicy(server.cors_origins)
    stack = [
        Middleware(
            BrowserGuard, origins=origins, hosts=HostPolicy(server.host, server.allowed_hosts)
        ),
        Middleware(CORSMiddleware, **origins.cors_options()),
        Middleware(
            BodyLimit,
            json_limit=server.max_body_mb << 20,
            upload_limit=settings.retrieval.max_upload_mb << 20,
            upload_paths=frozenset({"/v1/files"}),
        ),
    ]
    if server.api_key:
        stack.append(Middleware(APIKeyAuth, api_key=server.api_key))
    return stack


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

    routes = api_routes()
    app = Starlette(
        routes=routes,
        middleware=_middleware(runtime.settings),
        lifespan=lifespan,
        exception_handlers={
            APIError: handle_api_error,
            HTTPException: handle_http_exception,
            EmbedderBusy: handle_busy,
            EmbedderError: handle_unavailable,
            Exception: handle_unexpected,
        },
    )
    app.state.runtime = runtime
    app.state.openapi = openapi_document(routes, "Hearth", version("hearth"))
    app.state.responses = ResponseStore()  # for previous_response_id
    app.state.metrics = make_registry(runtime)
    settings = runtime.settings
    app.state.retrieval = Retrieval(
        settings.storage.resolved_data_dir(),
        settings.retrieval.lancedb_uri,
        settings.retrieval.max_upload_mb << 20,
        runtime.embedder,
        ChunkingOptions(settings.retrieval.chunk_tokens, settings.retrieval.chunk_overlap),
        settings.retrieval.parse_timeout,
        settings.retrieval.max_attempts,
    )
    return app
