"""Prefix affinity and request forwarding of `hearth serve --ray` (server/cluster), without
Ray: what a request's prompt begins with, the router's table and choice, the hand-over of
an HTTP request to an app and back, and the ids that name their replica."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from server import ids
from server.cluster.affinity import AffinityTable, block_hashes, rank_replicas, routing_text
from server.cluster.forwarding import (
    DISCONNECT_GRACE_SECONDS,
    ForwardedRequest,
    ResponseStart,
    answer,
    json_body,
)
from server.cluster.socket import SSEData, replica_error

SYSTEM = "You are the assistant of a bakery. " * 20


def chat(question: str, system: str = SYSTEM, model: str = "m") -> dict:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": [{"type": "text", "text": question}]},
        ],
    }


def test_requests_sharing_a_system_prompt_share_their_leading_blocks() -> None:
    a = block_hashes(routing_text("/v1/chat/completions", chat("Do you sell rye? " * 8)), 64)
    b = block_hashes(routing_text("/v1/chat/completions", chat("When do you open? " * 8)), 64)
    other = block_hashes(routing_text("/v1/chat/completions", chat("x", "Be brief. " * 80)), 64)
    shared = len(SYSTEM) // 64
    assert shared >= 5 and a[: shared - 1] == b[: shared - 1]
    assert a != b  # they part where the questions do
    assert other[0] != a[0]
    # Another model is another cache: nothing in common.
    assert block_hashes(routing_text("/v1/chat/completions", chat("x", model="n")), 64)[0] != a[0]


def test_every_prompt_api_has_a_routing_text_and_the_rest_none() -> None:
    assert "rye" in routing_text("/v1/completions", {"prompt": "rye bread"})
    assert "rye" in routing_text("/v1/completions", {"prompt": ["rye", "wheat"]})
    assert "rye" in routing_text("/api/generate", {"prompt": "rye", "system": "s"})
    assert "rye" in routing_text("/api/chat", {"messages": [{"role": "user", "content": "rye"}]})
    assert "rye" in routing_text(
        "/v1/messages", {"system": [{"type": "text", "text": "rye"}], "messages": []}
    )
    assert "rye" in routing_text("/v1/responses", {"instructions": "rye", "input": "hi"})
    tools = [{"type": "function", "function": {"name": "bake"}}]
    assert routing_text("/v1/chat/completions", {"tools": tools, "messages": []}).find("bake") > 0
    assert routing_text("/v1/embeddings", {"input": "rye"}) == ""
    # Hostile shapes give some text or none, never an exception.
    for body in ({"messages": 5}, {"messages": [None, 3, {"content": {"x": 1}}]}, {"prompt": 7}):
        routing_text("/v1/chat/completions", body)
        routing_text("/v1/completions", body)


def test_a_partial_last_block_is_left_out() -> None:
    assert block_hashes("x" * 63, 64) == []
    assert len(block_hashes("x" * 130, 64)) == 2


def test_the_table_knows_who_holds_how_much_of_a_prompt() -> None:
    table = AffinityTable()
    long = block_hashes("a" * 640, 64)
    table.record(long[:4], "r1")
    table.record(long, "r2")
    assert table.match(long, ["r1", "r2", "r3"]) == {"r1": 4, "r2": 10, "r3": 0}
    table.forget("r2")
    assert table.match(long, ["r1", "r2"]) == {"r1": 4, "r2": 0}
    assert table.blocks_held("r1") == 4 and table.blocks_held("r2") == 0


def test_the_table_forgets_the_least_recently_used_blocks_beyond_its_bound() -> None:
    table = AffinityTable(max_blocks=10)
    old, new = block_hashes("o" * 640, 64), block_hashes("n" * 640, 64)
    table.record(old, "r1")
    table.record(new, "r2")
    assert table.match(old, ["r1"]) == {"r1": 0}
    assert table.match(new, ["r2"]) == {"r2": 10}
    assert table.blocks_held("r1") == 0


def test_the_holder_is_preferred_until_it_is_too_busy() -> None:
    depths = {"r1": 5, "r2": 0}
    assert rank_replicas(depths, {"r1": 3, "r2": 0}, {}, 8) == [["r1"], ["r2"]]
    # Busier than the least busy by more than the threshold: the least busy takes it.
    assert rank_replicas(depths, {"r1": 9, "r2": 0}, {}, 8) == [["r2"], ["r1"]]


def test_requests_without_a_match_go_to_the_least_loaded_then_take_turns() -> None:
    none = {"r1": 0, "r2": 0, "r3": 0}
    assert rank_replicas(none, {"r1": 2, "r2": 1, "r3": 1}, {"r2": 50.0, "r3": 10.0}, 8)[0] == [
        "r3"
    ]
    # Idle replicas: the one never sent a new prompt, then the one sent one longest ago.
    assert rank_replicas(none, {}, {"r1": 5.0, "r3": 1.0}, 8)[0] == ["r2"]
    assert rank_replicas(none, {}, {"r1": 5.0, "r2": 7.0, "r3": 1.0}, 8)[0] == ["r3"]
    assert rank_replicas({}, {}, {}, 8) == []


def test_equal_holders_are_all_preferred() -> None:
    ranks = rank_replicas({"r1": 4, "r2": 4, "r3": 1}, {"r1": 2, "r2": 0, "r3": 0}, {}, 8)
    assert ranks == [["r2", "r1"], ["r3"]]


def test_ids_name_their_replica() -> None:
    try:
        ids.name_replica("ab12cd34")
        made = ids.new_id("resp_")
        assert made.startswith("resp_ab12cd34_")
        assert ids.replica_of(made, "resp_") == "ab12cd34"
        # A replica goes on with its own batches after a restart, not its neighbours'.
        assert ids.owns(ids.new_id("batch_"), "batch_")
        assert not ids.owns("batch_ef56ab78_0123", "batch_")
        assert not ids.owns("batch_0123", "batch_")
    finally:
        ids.name_replica("")
    assert ids.owns("batch_0123", "batch_") and not ids.owns("batch_ab12cd34_0123", "batch_")
    assert ids.replica_of(ids.new_id("resp_"), "resp_") == ""
    assert ids.replica_of("resp_../../x_y", "resp_") == ""
    assert ids.replica_of("msg_ab_cd", "resp_") == ""


def forwarded(path: str, body: bytes = b"", method: str = "POST") -> ForwardedRequest:
    return ForwardedRequest(
        method, path, b"", [(b"content-type", b"application/json")], body, ("127.0.0.1", 1)
    )


def test_json_body_is_what_the_router_reads_or_nothing() -> None:
    assert json_body(forwarded("/v1/chat/completions", b'{"model": "m"}')) == {"model": "m"}
    assert json_body(forwarded("/v1/chat/completions", b"{bad")) == {}
    assert json_body(forwarded("/v1/chat/completions", b"[1]")) == {}
    assert json_body(forwarded("/v1/models", method="GET")) == {}


async def collect(parts: AsyncIterator[ResponseStart | bytes], limit: int = 1000) -> list:
    out = []
    async for part in parts:
        out.append(part)
        if len(out) >= limit:
            break
    return out


def test_a_forwarded_request_is_answered_by_the_app_as_a_stream() -> None:
    async def tokens(request: Request) -> StreamingResponse:
        body = await request.json()

        async def gen() -> AsyncIterator[bytes]:
            for i in range(body["n"]):
                yield f"data: {i}\n\n".encode()

        return StreamingResponse(gen(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/t", tokens, methods=["POST"])])
    parts = asyncio.run(collect(answer(app, forwarded("/t", b'{"n": 3}'), [(b"x-r", b"r1")])))
    start, *chunks = parts
    assert isinstance(start, ResponseStart) and start.status == 200
    assert (b"x-r", b"r1") in start.headers
    assert b"".join(chunks) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_a_client_that_leaves_is_a_disconnect_for_the_app() -> None:
    # A raw ASGI app that streams, then waits on receive(): what it is told next must be
    # http.disconnect, at once, not after the grace period nor by being cancelled.
    # (An app polling request.is_disconnected() beside a StreamingResponse cannot be the
    # witness: Starlette's own listener may see the disconnect first and cancel the poller.)
    seen: list[str] = []

    async def endless(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.request"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(3):
            await send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": True})
        seen.append((await receive())["type"])

    async def leave_early() -> float:
        parts = answer(endless, forwarded("/e", b"{}"), [])
        await collect(parts, limit=3)
        began = asyncio.get_running_loop().time()
        await parts.aclose()  # what cancelling the Ray call does to the replica's side
        return asyncio.get_running_loop().time() - began

    waited = asyncio.run(asyncio.wait_for(leave_early(), 10))
    assert seen == ["http.disconnect"]
    assert waited < DISCONNECT_GRACE_SECONDS / 2


@pytest.mark.parametrize("crash", ["before", "never"])
def test_an_app_that_fails_to_answer_gives_an_openai_error(crash: str) -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        if crash == "before":
            raise RuntimeError("boom")

    parts = asyncio.run(collect(answer(broken, forwarded("/v1/models", method="GET"), [])))
    assert isinstance(parts[0], ResponseStart) and parts[0].status == 500
    assert b'"error"' in parts[1]


def test_server_sent_events_are_split_into_their_data_however_they_arrive() -> None:
    stream = (
        b'event: response.created\ndata: {"a": 1}\n\n: ping\n\n'
        b'event: x\r\ndata: {"b":\r\ndata: 2}\r\n\r\ndata: [DONE]\n\n'
    )
    whole = list(SSEData().feed(stream))
    assert whole == ['{"a": 1}', '{"b":\n2}', "[DONE]"]
    pieces = SSEData()
    one_by_one = [d for i in range(len(stream)) for d in pieces.feed(stream[i : i + 1])]
    assert one_by_one == whole


def test_a_replicas_error_answer_keeps_its_fields() -> None:
    body = b'{"error": {"message": "No such response", "type": "invalid_request_error", '
    body += b'"param": "previous_response_id", "code": "response_not_found"}}'
    error = replica_error(404, body)
    assert (error.status, error.message, error.param, error.code) == (
        404,
        "No such response",
        "previous_response_id",
        "response_not_found",
    )
    assert replica_error(502, b"<html>bad gateway</html>").message == "<html>bad gateway</html>"
