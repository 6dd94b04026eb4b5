"""The HTTP layer alone, in-process: Starlette's test client over the app, the real
tokenizer and template, and a fake engine (tests/fake_engine.py). Error shapes,
validation, SSE framing, the key, browsers and the OpenAPI document; the end-to-end
versions against real servers are in test_errors.py, test_chat_api.py and test_security.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from server.api.app import api_routes, create_app
from server.llama.model import LlamaModel
from server.model_files import resolve_chat_model
from server.settings import load_settings
from tests.fake_engine import SCRIPT, FakeEngine, fake_runtime
from tests.open_responses_schema import StreamEvent

BASE = "http://127.0.0.1:8080"


def make_client(tmp: Path, **server: Any) -> TestClient:
    settings = load_settings(
        overrides={"server": server, "storage": {"data_dir": str(tmp)}}, environ={}
    )
    runtime = fake_runtime(LlamaModel(resolve_chat_model("")), settings, tmp)
    return TestClient(create_app(runtime), base_url=BASE, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(tmp_path_factory.mktemp("http")) as c:
        yield c


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(tmp_path_factory.mktemp("keyed"), api_key="k3y") as c:
        yield c


def engine(client: TestClient) -> FakeEngine:
    return client.app.state.runtime.engine  # type: ignore[attr-defined,no-any-return]


def assert_error(r: Any, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


def sse_data(r: Any) -> list[str]:
    return [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]


HI = [{"role": "user", "content": "hi"}]


# --- validation and error shapes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.[0].role"),
        ({"messages": HI, "temperature": "hot"}, "temperature"),
        ({"messages": HI, "temperature": 3}, "temperature"),
        ({"messages": HI, "max_tokens": -1}, "max_tokens"),
        ({"messages": HI, "stop": 5}, "stop"),
        ({"messages": HI, "logit_bias": {"x": 1}}, "logit_bias"),
        ({"messages": HI, "logit_bias": {"999999": 1}}, "logit_bias"),
        ({"messages": HI, "n": 0}, "n"),
        ({"messages": HI, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": HI, "response_format": {"type": "xml"}}, "response_format.type"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, None),
    ],
)
def test_chat_validation(client: TestClient, body: dict, param: str | None) -> None:
    error = assert_error(client.post("/v1/chat/completions", json=body), 400, param)
    assert error["type"] == "invalid_request_error"


def test_domain_errors_get_their_status(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"model": "gpt-17", "messages": HI})
    assert assert_error(r, 404, "model")["code"] == "model_not_found"
    r = client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 5000})
    assert assert_error(r, 400, "messages")["code"] == "context_length_exceeded"
    body = {"messages": HI, "retrieval": {"vector_store_ids": ["vs_x"]}}
    r = client.post("/v1/chat/completions", json=body)
    assert assert_error(r, 503)["code"] == "embeddings_disabled"
    assert_error(client.get("/v1/vector_stores"), 503)
    assert_error(client.post("/v1/completions", json={"prompt": "", "max_tokens": 1}), 400)
    assert_error(client.get("/v1/no-such-path"), 404)
    assert_error(client.put("/v1/chat/completions"), 405)
    assert_error(client.post("/v1/chat/completions", content=b"{nope"), 415)
    r = client.post(
        "/v1/chat/completions", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert assert_error(r, 400)["code"] == "invalid_json"


def test_a_busy_engine_is_429_with_retry_after(client: TestClient) -> None:
    fake = engine(client)
    capacity, fake.capacity = fake.capacity, len(fake.submitted)
    try:
        r = client.post("/v1/chat/completions", json={"messages": HI})
        assert_error(r, 429)
        assert r.headers["retry-after"]
    finally:
        fake.capacity = capacity


# --- what successful answers look like -----------------------------------------------------


def test_chat_answer_shape(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 4, "n": 2})
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["finish_reason"] == "length" for c in body["choices"])
    assert body["usage"]["completion_tokens"] == 8
    assert body["usage"]["prompt_tokens"] == len(engine(client).submitted[-1].prompt_tokens)


def set_aliases(client: TestClient, aliases: tuple[str, ...]) -> None:
    pool = client.app.state.runtime.models  # type: ignore[attr-defined]
    spec = pool.specs["fake-model"]
    spec = replace(spec, aliases=aliases, names=frozenset({spec.id, *aliases}))
    pool.specs[spec.id] = pool.loaded[spec.id].spec = spec


def test_an_alias_of_the_chat_model_is_served_under_the_real_id(client: TestClient) -> None:
    """While the packaged model is served re-quantized, its own id keeps working."""
    set_aliases(client, ("packaged-original",))
    try:
        r = client.post(
            "/v1/chat/completions",
            json={"model": "packaged-original", "messages": HI, "max_tokens": 2},
        )
        assert r.status_code == 200 and r.json()["model"] == "fake-model"
        assert client.get("/v1/models/packaged-original").json()["id"] == "packaged-original"
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids == ["fake-model"]  # listed once, under what is really loaded
    finally:
        set_aliases(client, ())
    r = client.post("/v1/chat/completions", json={"model": "packaged-original", "messages": HI})
    assert_error(r, 404, "model")
    assert_error(client.get("/v1/models/packaged-original"), 404, "model")


def test_chat_stream_framing(client: TestClient) -> None:
    body = {
        "messages": HI,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logprobs": True,
        "top_logprobs": 1,
    }
    r = client.post("/v1/chat/completions", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    data = sse_data(r)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == SCRIPT
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 3
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert all(c["choices"][0]["logprobs"]["content"] for c in content)


def test_completion_stream_framing(client: TestClient) -> None:
    body = {"prompt": "Once", "max_tokens": 3, "stream": True, "echo": True}
    data = sse_data(client.post("/v1/completions", json=body))
    chunks = [json.loads(d) for d in data[:-1]]
    assert data[-1] == "[DONE]" and chunks[0]["choices"][0]["text"] == "Once"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    body = {"prompt": "Once", "max_tokens": 3, "stream": True, "logprobs": 1}
    chunks = [json.loads(d) for d in sse_data(client.post("/v1/completions", json=body))[:-1]]
    offsets = [c["choices"][0]["logprobs"]["text_offset"][0] for c in chunks]
    texts = [c["choices"][0]["text"] for c in chunks]
    assert offsets == [sum(len(t) for t in texts[:i]) for i in range(len(texts))]


def test_a_failed_request_ends_its_stream_with_an_error_and_done(client: TestClient) -> None:
    fake = engine(client)
    fake.fail_with = "the fake engine failed"
    try:
        data = sse_data(client.post("/v1/chat/completions", json={"messages": HI, "stream": True}))
        assert data[-1] == "[DONE]"
        assert json.loads(data[-2])["error"]["message"] == "the fake engine failed"
        r = client.post("/v1/chat/completions", json={"messages": HI})
        assert assert_error(r, 500)["type"] == "server_error"
        r = client.post("/v1/responses", json={"input": "hi", "stream": True})
        data = sse_data(r)
        assert data[-1] == "[DONE]"
        events = [json.loads(d) for d in data[:-1]]
        assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
        assert events[-2]["error"]["message"] == "the fake engine failed"
        failed = events[-1]["response"]
        assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
        for event in events:
            StreamEvent.validate_python(event)
    finally:
        fake.fail_with = None


def test_responses_shape(client: TestClient) -> None:
    body = client.post("/v1/responses", json={"input": "hi", "max_output_tokens": 3}).json()
    assert body["object"] == "response" and body["status"] == "incomplete"
    assert body["output"][0]["type"] == "message"
    stored = client.get(f"/v1/responses/{body['id']}").json()
    assert stored["id"] == body["id"]
    assert client.delete(f"/v1/responses/{body['id']}").json()["deleted"]
    assert_error(client.get(f"/v1/responses/{body['id']}"), 404)


# --- the key and browsers ------------------------------------------------------------------


def test_every_route_but_health_needs_the_key(keyed: TestClient) -> None:
    for route in api_routes():
        if isinstance(route, WebSocketRoute):
            # Refused before the handshake is accepted.
            with pytest.raises(WebSocketDisconnect) as refused, keyed.websocket_connect(route.path):
                pass
            assert refused.value.code == 1008
            continue
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method == "HEAD" or (method, route.path) in {("GET", "/"), ("GET", "/health")}:
                continue
            path = route.path.replace("{model:path}", "m").replace("{", "").replace("}", "")
            r = keyed.request(method, path, json={})
            assert r.status_code == 401, (method, path, r.status_code)
    assert keyed.get("/health").json() == {"status": "ok"}
    assert keyed.get("/health", headers={"Authorization": "Bearer k3y"}).json()["engine"]
    ok = keyed.post(
        "/v1/chat/completions", json={"messages": HI}, headers={"Authorization": "Bearer k3y"}
    )
    assert ok.status_code == 200


def test_each_api_is_refused_in_its_own_shape(keyed: TestClient) -> None:
    """The key (also as Anthropic's x-api-key header), unknown paths and the browser
    guard answer Ollama's clients and Anthropic's in the shapes they read."""
    ollama = keyed.get("/api/tags")
    assert ollama.status_code == 401 and ollama.json() == {"error": "Incorrect API key provided."}
    anthropic = keyed.post("/v1/messages", json={}, headers={"x-api-key": "wrong"})
    assert anthropic.status_code == 401
    assert anthropic.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
    }
    assert keyed.get("/v1/models", headers={"x-api-key": "k3y"}).status_code == 200
    assert keyed.get("/api/tags", headers={"x-api-key": "k3y"}).status_code == 200
    unknown = keyed.get("/api/nothing-here", headers={"x-api-key": "k3y"})
    assert unknown.status_code == 404 and "Unknown path" in unknown.json()["error"]
    evil = keyed.post(
        "/v1/messages",
        json={},
        headers={"x-api-key": "k3y", "Origin": "https://evil.example"},
    )
    assert evil.status_code == 403 and evil.json()["error"]["type"] == "permission_error"


def test_origins_and_hosts(client: TestClient) -> None:
    evil = client.get("/v1/models", headers={"Origin": "https://evil.example"})
    assert assert_error(evil, 403)["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in evil.headers
    local = client.get("/v1/models", headers={"Origin": "http://localhost:5173"})
    assert local.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert local.headers["x-content-type-options"] == "nosniff"
    rebound = client.get("/v1/models", headers={"Host": "attacker.example"})
    assert assert_error(rebound, 403)["code"] == "host_not_allowed"
    preflight = client.options(
        "/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 403


def test_body_limits(tmp_path: Path) -> None:
    with make_client(tmp_path, max_body_mb=1) as small:
        big = {"messages": [{"role": "user", "content": "x" * (2 << 20)}]}
        r = small.post("/v1/chat/completions", json=big)
        assert assert_error(r, 413)["code"] == "request_too_large"
        assert r.headers["connection"] == "close"


# --- the OpenAPI document -----------------------------------------------------------------


def test_openapi_describes_every_route(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    for route in api_routes():
        if not isinstance(route, Route):
            continue  # the Responses WebSocket mode: not an OpenAPI operation
        path = route.path.replace(":path", "")
        for method in route.methods or ():
            if method != "HEAD":
                assert method.lower() in doc["paths"][path], (method, path)
    chat = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
    ref = chat["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert "messages" in schema["properties"] and "messages" in schema["required"]
    links = doc["paths"]["/v1/files"]["post"]["responses"]["200"]["links"]
    assert "retrieve_file_get" in links
