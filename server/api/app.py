"""The Starlette application: routes, middleware and error handlers over a Runtime.

The app holds the Runtime (the composition root, server/runtime.py) and nothing else; the
runtime's lifetime is the app's lifespan. Endpoint modules parse, call the chat service or
retrieval, and format; errors of every layer meet HTTP in api/errors.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Route, WebSocketRoute

from server.api import batches, responses, uploads
from server.api import conversations as conv
from server.api import stored_completions as stored
from server.api import vector_stores as vs
from server.api.anthropic.messages import count_tokens, create_message
from server.api.auth import APIKeyAuth
from server.api.body import BodyLimit, UploadPaths
from server.api.browser import BrowserGuard, HostPolicy, OriginPolicy
from server.api.chat import chat_completions
from server.api.chat_page import chat_page
from server.api.completions import completions
from server.api.embeddings import embeddings
from server.api.error_shapes import HANDLERS
from server.api.files import create_file, delete_file, file_content, list_files, retrieve_file
from server.api.models import list_models, load_model, retrieve_model, unload_model
from server.api.ollama.routes import ollama_routes
from server.api.openapi import openapi
from server.api.rerank import rerank
from server.api.responses.background import BackgroundResponses
from server.api.status import health, metrics, stats
from server.api.tokenize import detokenize, tokenize
from server.runtime import Runtime
from server.settings import Settings


def api_routes() -> list[BaseRoute]:
    """Every route the server answers (also what /openapi.json describes)."""
    return [
        Route("/", chat_page, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/chat/completions", stored.list_stored, methods=["GET"]),
        Route("/v1/chat/completions/{completion_id}", stored.retrieve_stored, methods=["GET"]),
        Route("/v1/chat/completions/{completion_id}", stored.update_stored, methods=["POST"]),
        Route("/v1/chat/completions/{completion_id}", stored.delete_stored, methods=["DELETE"]),
        Route(
            "/v1/chat/completions/{completion_id}/messages",
            stored.list_stored_messages,
            methods=["GET"],
        ),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/batches", batches.create_batch, methods=["POST"]),
        Route("/v1/batches", batches.list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", batches.retrieve_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", batches.cancel_batch, methods=["POST"]),
        Route("/v1/rerank", rerank, methods=["POST"]),
        Route("/v1/reranking", rerank, methods=["POST"]),
        Route("/rerank", rerank, methods=["POST"]),
        Route("/v1/messages", create_message, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/v1/responses", responses.create_response, methods=["POST"]),
        WebSocketRoute("/v1/responses", responses.responses_socket),
        Route("/v1/responses/compact", responses.compact_response, methods=["POST"]),
        Route("/v1/responses/input_tokens", responses.count_input_tokens, methods=["POST"]),
        Route("/v1/responses/{response_id}", responses.get_response, methods=["GET"]),
        Route("/v1/responses/{response_id}", responses.delete_response, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/cancel", responses.cancel_response, methods=["POST"]),
        Route(
            "/v1/responses/{response_id}/input_items",
            responses.list_input_items,
            methods=["GET"],
        ),
        Route("/v1/conversations", conv.create_conversation, methods=["POST"]),
        Route("/v1/conversations/{conversation_id}", conv.get_conversation, methods=["GET"]),
        Route("/v1/conversations/{conversation_id}", conv.update_conversation, methods=["POST"]),
        Route("/v1/conversations/{conversation_id}", conv.delete_conversation, methods=["DELETE"]),
        Route("/v1/conversations/{conversation_id}/items", conv.add_items, methods=["POST"]),
        Route("/v1/conversations/{conversation_id}/items", conv.list_items, methods=["GET"]),
        Route(
            "/v1/conversations/{conversation_id}/items/{item_id}", conv.get_item, methods=["GET"]
        ),
        Route(
            "/v1/conversations/{conversation_id}/items/{item_id}",
            conv.delete_item,
            methods=["DELETE"],
        ),
        Route("/v1/files", create_file, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", retrieve_file, methods=["GET"]),
        Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
        Route("/v1/uploads", uploads.create_upload, methods=["POST"]),
        Route("/v1/uploads/{upload_id}/parts", uploads.add_part, methods=["POST"]),
        Route("/v1/uploads/{upload_id}/complete", uploads.complete_upload, methods=["POST"]),
        Route("/v1/uploads/{upload_id}/cancel", uploads.cancel_upload, methods=["POST"]),
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
        Route(
            "/v1/vector_stores/{store_id}/files/{file_id}",
            vs.update_store_file,
            methods=["POST"],
        ),
        Route(
            "/v1/vector_stores/{store_id}/files/{file_id}/content",
            vs.store_file_content,
            methods=["GET"],
        ),
        Route("/v1/vector_stores/{store_id}/search", vs.search_store, methods=["POST"]),
        Route("/v1/vector_stores/{store_id}/file_batches", vs.create_batch, methods=["POST"]),
        Route(
            "/v1/vector_stores/{store_id}/file_batches/{batch_id}",
            vs.retrieve_batch,
            methods=["GET"],
        ),
        Route(
            "/v1/vector_stores/{store_id}/file_batches/{batch_id}/cancel",
            vs.cancel_batch,
            methods=["POST"],
        ),
        Route(
            "/v1/vector_stores/{store_id}/file_batches/{batch_id}/files",
            vs.list_batch_files,
            methods=["GET"],
        ),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
        Route("/models/load", load_model, methods=["POST"]),
        Route("/models/unload", unload_model, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *ollama_routes(),
    ]


def middleware(settings: Settings) -> list[Middleware]:
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
            upload_paths=UploadPaths(exact=("/v1/files",), parts="/v1/uploads/"),
        ),
    ]
    if server.api_key:
        stack.append(Middleware(APIKeyAuth, api_key=server.api_key))
    return stack


async def start_app(app: Starlette) -> None:
    """Start what the app serves: the runtime, then what runs through the app itself."""
    runtime: Runtime = app.state.runtime
    await runtime.start()
    runtime.batches.start(app)


async def stop_app(app: Starlette) -> None:
    """Everything start_app started, newest first."""
    await app.state.background_responses.stop()
    await app.state.runtime.batches.stop()
    await app.state.runtime.stop()


def create_app(runtime: Runtime) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await start_app(app)
        try:
            yield
        finally:
            await stop_app(app)

    app = Starlette(
        routes=api_routes(),
        middleware=middleware(runtime.settings),
        lifespan=lifespan,
        exception_handlers=HANDLERS,
    )
    app.state.runtime = runtime
    app.state.background_responses = BackgroundResponses()
    return app
