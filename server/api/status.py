"""What the server is doing: GET /health (liveness, and why not), GET /stats (the
engines' counters) and GET /metrics (the same for Prometheus)."""

from __future__ import annotations

from dataclasses import asdict

from prometheus_client import generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.openapi import documented
from server.llama.backend import layers_offloaded
from server.runtime import Runtime

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@documented("Liveness: 200 while everything runs, 503 with the reasons otherwise")
async def health(request: Request) -> Response:
    """200 while every engine thread and background task runs, else 503 with the reasons.
    Without the API key (when one is set) only the status is shown."""
    runtime: Runtime = request.app.state.runtime
    problems = runtime.problems()
    body: dict[str, object] = {"status": "unavailable" if problems else "ok"}
    if problems:
        body["reasons"] = problems
    if getattr(request.state, "authenticated", True):
        body["model"] = runtime.model_id
        backend: dict[str, object] = {
            **runtime.backend.as_dict(),
            "layers_on_gpu": runtime.layers_on_gpu,
            "layers": runtime.model.n_layer + 1,
        }
        if runtime.embedder is not None:
            # The embedding model is offloaded as the chat model is (model.n_gpu_layers).
            n_layer = runtime.embedder.model.n_layer
            gpu_layers = runtime.settings.model.n_gpu_layers
            backend["embedding"] = {
                "layers_on_gpu": layers_offloaded(n_layer, gpu_layers, runtime.backend),
                "layers": n_layer + 1,
            }
        body["backend"] = backend
        body["engine"] = runtime.engine.stats.snapshot()
    return JSONResponse(body, status_code=503 if problems else 200)


@documented("Engine and cache counters")
async def stats(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    body: dict[str, object] = runtime.engine.stats.snapshot()
    if runtime.embedder is not None:
        body["embeddings"] = asdict(runtime.embedder.stats)
    return JSONResponse(body)


@documented("Prometheus metrics", returns="text/plain")
async def metrics(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    return Response(generate_latest(runtime.metrics), media_type=METRICS_CONTENT_TYPE)
