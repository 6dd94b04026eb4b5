"""The routes of Ollama's API."""

from __future__ import annotations

from starlette.routing import Route

from server.api.ollama import catalog, embed, generate


def ollama_routes() -> list[Route]:
    refused = ["/api/pull", "/api/push", "/api/create", "/api/copy"]
    return [
        Route("/api/chat", generate.chat, methods=["POST"]),
        Route("/api/generate", generate.generate, methods=["POST"]),
        Route("/api/embed", embed.embed, methods=["POST"]),
        Route("/api/embeddings", embed.embeddings, methods=["POST"]),
        Route("/api/tags", catalog.tags, methods=["GET"]),
        Route("/api/show", catalog.show, methods=["POST"]),
        Route("/api/ps", catalog.running, methods=["GET"]),
        Route("/api/version", catalog.version, methods=["GET"]),
        *(Route(path, catalog.refused, methods=["POST"]) for path in refused),
        Route("/api/delete", catalog.refused, methods=["DELETE"]),
    ]
