"""`hearth serve --ray`: the Ray Serve application. N replicas of the whole server (engine,
prefix cache, retrieval: the Runtime and the app of server/api, unchanged) behind one
ingress that forwards each HTTP request to the replica the router picks (router.py), the
answer streaming back as it is made.

    client ── HTTP ──> Ray Serve proxy ──> HearthIngress ── handle ──> HearthReplica x N
                                           (router: prefix affinity)   (create_app(Runtime))

What the replicas share is what Hearth's storage settings say: the data directory (on one
machine; `storage.several_processes` lets them use it at once) or a bucket and PostgreSQL
(on several). What each keeps to itself: its KV cache and its stored responses, whose
ids name the replica (server/ids.py) so that `previous_response_id` finds them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from server.api.app import create_app, middleware, start_app, stop_app
from server.api.error_shapes import shaped
from server.api.errors import APIError
from server.api.responses.websocket import answer_socket
from server.cluster import views
from server.cluster.affinity import block_hashes, routing_text
from server.cluster.forwarding import ForwardedRequest, ResponseStart, answer, json_body
from server.cluster.socket import post_body, post_headers, relay
from server.ids import name_replica, replica_of
from server.settings import Settings

logger = logging.getLogger("hearth.cluster")

APP_NAME = "hearth"
REPLICA_DEPLOYMENT = "HearthReplica"
# Which replica answered: on every response that passed through the ingress.
REPLICA_HEADER = b"x-hearth-replica"
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
# How often a replica reports its engine's counters to the routers (GET /cluster/replicas).
STATS_PERIOD_SECONDS = 1.0


def replica_settings(settings: Settings, rank: int, replicas: int) -> Settings:
    """One replica's settings: the data directory used by several processes, the watched
    folder watched by replica 0 alone, its own cache directory, threads per its CPUs."""
    s = settings.model_copy(deep=True)
    if replicas > 1:
        s.storage.several_processes = True
        if rank != 0:
            s.retrieval.watch_dir = ""
        if s.cache.persist_dir:
            s.cache.persist_dir = str(Path(s.cache.persist_dir) / f"replica-{rank}")
    if s.model.n_threads == 0:
        s.model.n_threads = max(1, math.ceil(s.cluster.replica_cpus))
    return s


class HearthReplica:
    """One whole Hearth server, answering forwarded requests with its own app."""

    async def __init__(self, settings: Settings) -> None:
        from ray import serve

        from server.llama.log import route_llama_logs_to_python
        from server.runtime import Runtime

        context = serve.get_replica_context()
        self.name = context.replica_tag
        rank = getattr(context.rank, "rank", context.rank)
        name_replica(self.name)
        level = getattr(logging, settings.server.log_level.upper())
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        route_llama_logs_to_python()
        own = replica_settings(settings, int(rank), settings.cluster.replicas)
        self.runtime = await asyncio.to_thread(Runtime.load, own)
        self.app = create_app(self.runtime)
        await start_app(self.app)
        self._header = [(REPLICA_HEADER, self.name.encode())]
        # Forwarded requests begun, and those not yet answered (what the routers check
        # their own counts against: router.py).
        self.started = 0
        self.open = 0

    async def handle(self, request: ForwardedRequest) -> AsyncIterator[ResponseStart | bytes]:
        self.started += 1
        self.open += 1
        try:
            async for part in answer(self.app, request, self._header):
                yield part
        finally:
            self.open -= 1

    def record_routing_stats(self) -> dict[str, Any]:
        """The engine's counters the routers show (Ray Serve asks every few seconds)."""
        stats = self.runtime.engine.stats
        cached = stats.cache.hit_tokens
        computed = stats.prompt_tokens_processed
        return {
            "requests_finished": stats.requests_finished,
            "running": stats.running,
            "waiting": stats.waiting,
            "prompt_tokens_computed": computed,
            "prompt_tokens_cached": cached,
            "cached_fraction": round(cached / (cached + computed), 4) if cached + computed else 0.0,
            "cache_cells": stats.cache_cells,
            "ram_bytes": stats.ram_bytes,
            "requests_started": self.started,
            "requests_open": self.open,
        }

    def check_health(self) -> None:
        problems = self.runtime.problems()
        if problems:
            raise RuntimeError("; ".join(problems))

    async def __del__(self) -> None:
        await stop_app(self.app)


def _stored_on(path: str, body: dict[str, Any]) -> str:
    """The replica holding the stored response, stored chat completion, conversation or
    batch a request names ("" for none)."""
    if path.startswith("/v1/responses/"):
        return replica_of(path.removeprefix("/v1/responses/").split("/", 1)[0], "resp_")
    if path.startswith("/v1/chat/completions/"):
        completion = path.removeprefix("/v1/chat/completions/").split("/", 1)[0]
        return replica_of(completion, "chatcmpl-")
    if path.startswith("/v1/conversations/"):
        return replica_of(path.removeprefix("/v1/conversations/").split("/", 1)[0], "conv_")
    if path.startswith("/v1/batches/"):  # the replica running it (others read its file)
        return replica_of(path.removeprefix("/v1/batches/").split("/", 1)[0], "batch_")
    if not path.startswith("/v1/responses"):
        return ""
    conversation = body.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    if isinstance(conversation, str):
        return replica_of(conversation, "conv_")
    previous = body.get("previous_response_id")
    return replica_of(previous, "resp_") if isinstance(previous, str) else ""


class HearthIngress:
    """The cluster's one address: the same middleware as a single server (host and origin
    checks, body limits, the API key), then every request forwarded to a replica."""

    def __init__(self, replicas: Any, settings: Settings) -> None:
        self.replicas = replicas.options(stream=True)
        self.settings = settings
        self.served: dict[str, int] = {}  # responses per replica (its header)

    def forwarded(
        self,
        request: HTTPConnection,
        body: bytes,
        method: str = "",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> ForwardedRequest:
        client = request.client
        forwarded = ForwardedRequest(
            method=method or request.scope["method"],
            path=request.url.path,
            query_string=request.scope.get("query_string", b""),
            headers=headers if headers is not None else list(request.scope["headers"]),
            body=body,
            client=(client.host, client.port) if client else None,
            scheme={"ws": "http", "wss": "https"}.get(request.url.scheme, request.url.scheme),
        )
        payload = json_body(forwarded)
        text = routing_text(forwarded.path, payload)
        forwarded.prefix_blocks = block_hashes(text, self.settings.cluster.block_chars)
        forwarded.replica = _stored_on(forwarded.path, payload)
        return forwarded

    async def forward(self, request: Request) -> Response:
        forwarded = self.forwarded(request, await request.body())
        stream = self.replicas.handle.remote(forwarded)
        try:
            start = await stream.__anext__()
        except Exception as e:  # no replica up, or it died: the client's own error shape
            logger.warning("forwarding %s failed: %s", forwarded.path, e)
            stream.cancel()
            error = APIError(503, f"no replica could answer: {type(e).__name__}")
            return shaped(forwarded.path, error)
        assert isinstance(start, ResponseStart)
        replica = dict(start.headers).get(REPLICA_HEADER, b"").decode()
        self.served[replica] = self.served.get(replica, 0) + 1

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in stream:
                    yield chunk
            finally:
                stream.cancel()  # the client left early (a no-op once the answer is whole)

        response = StreamingResponse(body(), status_code=start.status)
        response.raw_headers = start.headers
        return response

    async def responses_socket(self, ws: WebSocket) -> None:
        """The Responses WebSocket mode: each response.create forwarded as a streamed
        POST /v1/responses to the replica the router picks (socket.py)."""

        async def respond(ws: WebSocket, fields: dict[str, Any]) -> None:
            forwarded = self.forwarded(ws, post_body(fields), "POST", post_headers(ws))
            start = await relay(ws, self.replicas.handle.remote(forwarded))
            replica = dict(start.headers).get(REPLICA_HEADER, b"").decode()
            self.served[replica] = self.served.get(replica, 0) + 1

        await answer_socket(ws, respond)

    async def replica_stats(self, request: Request) -> JSONResponse:
        router = views.ROUTERS.get(REPLICA_DEPLOYMENT)
        view = router.view() if router is not None else []
        for row in view:
            row["served"] = self.served.get(row["replica"], 0)
        if not view:
            view = [{"replica": r, "served": n} for r, n in sorted(self.served.items())]
        return JSONResponse({"router": self.settings.cluster.router, "replicas": view})

    def __serve_build_asgi_app__(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/cluster/replicas", self.replica_stats, methods=["GET"]),
                WebSocketRoute("/v1/responses", self.responses_socket),
                Route("/{path:path}", self.forward, methods=ALL_METHODS),
            ],
            middleware=middleware(self.settings),
        )


def build(settings: Settings) -> Any:
    """The Ray Serve application (bound deployments) for these settings."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    cluster = settings.cluster
    router_class: Any
    if cluster.router == "prefix":
        from server.cluster.router import PrefixAffinityRouter

        router_class = PrefixAffinityRouter
    else:
        from ray.serve._private.request_router.pow_2_router import (
            PowerOfTwoChoicesRequestRouter,
        )

        router_class = PowerOfTwoChoicesRequestRouter
    replica = serve.deployment(
        HearthReplica,
        name=REPLICA_DEPLOYMENT,
        num_replicas=cluster.replicas,
        max_ongoing_requests=cluster.max_ongoing_requests,
        ray_actor_options={"num_cpus": cluster.replica_cpus, "num_gpus": cluster.replica_gpus},
        graceful_shutdown_timeout_s=settings.server.drain_seconds,
        request_router_config=RequestRouterConfig(
            request_router_class=router_class,
            request_router_kwargs=(
                {"imbalance_threshold": cluster.imbalance_threshold}
                if cluster.router == "prefix"
                else {}
            ),
            request_routing_stats_period_s=STATS_PERIOD_SECONDS,
            request_routing_stats_timeout_s=10.0,
        ),
    )
    ingress = serve.deployment(
        serve.ingress()(HearthIngress),
        name="HearthIngress",
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=max(1024, cluster.max_ongoing_requests * cluster.replicas),
    )
    return ingress.bind(replica.bind(settings), settings)


def _start_ray(address: str, settings: Settings) -> None:
    import ray

    cluster = settings.cluster
    if address in ("", "local"):
        need = math.ceil(cluster.replicas * cluster.replica_cpus) + 1
        ray.init(
            num_cpus=max(os.cpu_count() or 1, need),
            num_gpus=None,
            include_dashboard=False,
            configure_logging=False,
        )
    else:
        ray.init(address=address, configure_logging=False)


def serve_on_ray(settings: Settings) -> int:
    """Start (or join) Ray, run the application on server.host:server.port, and keep it
    until SIGTERM or Ctrl-C; then Ray Serve drains the replicas (server.drain_seconds)."""
    import ray
    from ray import serve

    _start_ray(settings.cluster.ray_address, settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(
            http_options={"host": settings.server.host, "port": settings.server.port},
        )
        try:
            serve.run(build(settings), name=APP_NAME, route_prefix="/")
        except RuntimeError as e:  # replicas that cannot start: a missing model, storage
            print(
                f"hearth: the replicas did not start ({e}); their log above says why",
                file=sys.stderr,
            )
            return 1
        logger.warning(
            "Hearth on Ray Serve: %d replicas (%s router) on http://%s:%d",
            settings.cluster.replicas,
            settings.cluster.router,
            settings.server.host,
            settings.server.port,
        )
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
