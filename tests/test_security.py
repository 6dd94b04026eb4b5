"""What a web page, a stranger on the network or a careless client can do: nothing harmful.

Against real servers on loopback: browser origins and CORS, DNS rebinding (Host), media
types, the API key on every route, body limits counted as bytes arrive.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import RunningServer, hearth_cli, start_server, stop_server

KEY = "sk-test-0123456789"
EVIL = "https://evil.example"
FRIEND = "https://chat.example.org"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A key from a file (not on the command line), one extra allowed origin, 1 MiB
    uploads and 1 MiB JSON bodies."""
    tmp = tmp_path_factory.mktemp("keyed")
    key_file = tmp / "key"
    key_file.write_text(KEY + "\n")
    config = tmp / "hearth.toml"
    config.write_text(
        f'[server]\ncors_origins = ["{FRIEND}"]\nmax_body_mb = 1\n[retrieval]\nmax_upload_mb = 1\n'
    )
    s = start_server(
        tmp,
        "--config",
        str(config),
        "--api-key-file",
        str(key_file),
        "--data-dir",
        str(tmp / "data"),
        "--n-ctx",
        "2048",
    )
    s.api_key = KEY
    s.data_dir = tmp / "data"  # type: ignore[attr-defined]
    yield s
    stop_server(s)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def still_serves(server: RunningServer) -> None:
    r = httpx.post(
        f"{server.base_url}/completions",
        json={"prompt": "The sky is", "max_tokens": 3},
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


# --- browsers ------------------------------------------------------------------------------


def test_a_foreign_page_cannot_read_the_files(server: RunningServer) -> None:
    """The issue's scenario: no key set, a page at another origin asks for /v1/files."""
    r = httpx.get(f"{server.base_url}/files", headers={"Origin": EVIL})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in r.headers
    # Its preflight is refused as well, so a DELETE or a JSON POST never starts.
    r = httpx.options(
        f"{server.base_url}/files/file-x",
        headers={"Origin": EVIL, "Access-Control-Request-Method": "DELETE"},
    )
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    # A "simple" request (no preflight) from that page is refused before anything runs.
    r = httpx.post(
        f"{server.base_url}/chat/completions",
        content=b'{"messages": [{"role": "user", "content": "hi"}]}',
        headers={"Origin": EVIL, "Content-Type": "text/plain"},
    )
    assert r.status_code == 403
    # A subresource load from another site carries no Origin, but says where it is from.
    r = httpx.get(
        f"{server.base_url}/files",
        headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
    )
    assert r.status_code == 403
    # Following a link to the chat page is fine.
    r = httpx.get(
        f"{server.url}/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    )
    assert r.status_code == 200


def test_pages_on_this_machine_may_use_the_api(server: RunningServer) -> None:
    port = server.url.rsplit(":", 1)[1]
    for origin in (f"http://127.0.0.1:{port}", "http://localhost:3000", "http://[::1]:5173"):
        r = httpx.get(f"{server.base_url}/files", headers={"Origin": origin})
        assert r.status_code == 200, (origin, r.text)
        assert r.headers["access-control-allow-origin"] == origin
        r = httpx.options(
            f"{server.base_url}/chat/completions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert r.status_code == 200
        assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_the_servers_own_pages_are_same_origin(server: RunningServer) -> None:
    """The chat page reached by a LAN address calls the API from that same origin."""
    port = server.url.rsplit(":", 1)[1]
    own = {"Origin": f"http://192.168.1.5:{port}", "Host": f"192.168.1.5:{port}"}
    assert httpx.get(f"{server.base_url}/models", headers=own).status_code == 200
    other = {"Origin": f"http://192.168.1.5:{port}", "Host": f"127.0.0.1:{port}"}
    assert httpx.get(f"{server.base_url}/models", headers=other).status_code == 403


def test_listed_origins_are_allowed(keyed: RunningServer) -> None:
    r = httpx.get(f"{keyed.base_url}/models", headers={"Origin": FRIEND, **auth()})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == FRIEND
    r = httpx.get(f"{keyed.base_url}/models", headers={"Origin": EVIL, **auth()})
    assert r.status_code == 403  # the key does not make a foreign page welcome


def test_dns_rebinding_is_refused(server: RunningServer) -> None:
    port = server.url.rsplit(":", 1)[1]
    r = httpx.get(f"{server.base_url}/files", headers={"Host": f"evil.example:{port}"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "host_not_allowed"
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "127.0.0.1", f"[::1]:{port}"):
        assert httpx.get(f"{server.base_url}/models", headers={"Host": host}).status_code == 200


def test_json_endpoints_want_json(server: RunningServer) -> None:
    body = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}'
    for media in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": media} if media else {}
        r = httpx.post(f"{server.base_url}/chat/completions", content=body, headers=headers)
        assert r.status_code == 415, (media, r.text)
        assert r.json()["error"]["code"] == "unsupported_media_type"
    r = httpx.post(
        f"{server.base_url}/chat/completions",
        content=body,
        headers={"Content-Type": "application/json; charset=utf-8"},
        timeout=60,
    )
    assert r.status_code == 200


# --- the key -------------------------------------------------------------------------------


def test_every_route_but_health_needs_the_key(keyed: RunningServer) -> None:
    closed = [
        ("GET", "/v1/models"),
        ("GET", "/v1/files"),
        ("POST", "/tokenize"),
        ("POST", "/detokenize"),
        ("GET", "/stats"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/vector_stores"),
    ]
    for method, path in closed:
        r = httpx.request(method, f"{keyed.url}{path}", json={})
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.request(method, f"{keyed.url}{path}", json={}, headers={"Authorization": "x"})
        assert r.status_code == 401
    # Liveness for anyone, details with the key.
    bare = httpx.get(f"{keyed.url}/health").json()
    assert bare == {"status": "ok"}
    full = httpx.get(f"{keyed.url}/health", headers=auth()).json()
    assert full["status"] == "ok" and "engine" in full
    # The chat page is static; it asks for the key itself.
    assert httpx.get(f"{keyed.url}/").status_code == 200
    assert httpx.post(f"{keyed.url}/tokenize", json={"content": "hi"}, headers=auth()).is_success
    keyed.client().models.list()


def test_key_file_keeps_the_key_off_the_command_line(keyed: RunningServer) -> None:
    cmdline = Path(f"/proc/{keyed.proc.process.pid}/cmdline").read_bytes()
    assert KEY.encode() not in cmdline


def test_listening_beyond_loopback_needs_a_key(tmp_path: Path) -> None:
    r = hearth_cli("serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path), timeout=60)
    assert r.returncode == 2
    assert "API key" in r.stderr and "--allow-insecure-remote" in r.stderr
    missing = hearth_cli("serve", "--api-key-file", str(tmp_path / "nope"), timeout=60)
    assert missing.returncode == 2 and "api_key_file" in missing.stderr


# --- body sizes ----------------------------------------------------------------------------


def test_json_bodies_are_capped(keyed: RunningServer) -> None:
    big = {"messages": [{"role": "user", "content": "x" * (2 << 20)}]}
    r = httpx.post(f"{keyed.base_url}/chat/completions", json=big, headers=auth(), timeout=60)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(64):
            yield b"y" * 65536
        yield b'"}]}'

    r = httpx.post(
        f"{keyed.base_url}/chat/completions",
        content=chunks(),
        headers={"Content-Type": "application/json", **auth()},
        timeout=60,
    )
    assert r.status_code == 413
    still_serves(keyed)


def test_chunked_upload_stops_at_the_limit(keyed: RunningServer) -> None:
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield (
            b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\n"
        )
        for _ in range(3200):  # 200 MiB if all of it were read
            sent += 65536
            yield b"z" * 65536
        yield b"\r\n--b--\r\n"

    started = time.monotonic()
    try:
        r = httpx.post(
            f"{keyed.base_url}/files",
            content=body(),
            headers={"Content-Type": "multipart/form-data; boundary=b", **auth()},
            timeout=120,
        )
        assert r.status_code == 413, r.text
    except httpx.TransportError:
        pass  # the server answered 413 and closed the connection while we still wrote
    assert sent < 64 << 20, "the server kept reading far past the limit"
    assert time.monotonic() - started < 60
    files = keyed.client().files.list().data
    assert not any(f.filename == "big.txt" for f in files)
    # Within the limit still works.
    f = keyed.client().files.create(file=("ok.txt", io.BytesIO(b"fine")), purpose="assistants")
    assert f.bytes == 4
    still_serves(keyed)


def test_limits_on_metadata_and_attributes(keyed: RunningServer) -> None:
    client = keyed.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.vector_stores.create(name="m", metadata={str(i): "v" for i in range(17)})
    assert e.value.param == "metadata"
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.create(name="m", metadata={"k": "v" * 513})
    store = client.vector_stores.create(name="m", metadata={str(i): "v" * 512 for i in range(16)})
    f = client.files.create(file=("a.txt", io.BytesIO(b"some text")), purpose="assistants")
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.files.create(
            vector_store_id=store.id, file_id=f.id, attributes={"k" * 65: "v"}
        )


def test_responses_websocket_needs_the_key_and_an_allowed_origin(keyed: RunningServer) -> None:
    """Browsers let any page open a WebSocket anywhere: the handshake gets the same key and
    Origin checks as every HTTP route."""
    url = keyed.url.replace("http://", "ws://") + "/v1/responses"
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {**auth(), "Origin": "https://evil.example"},
    ):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, additional_headers=headers, open_timeout=30)
        assert refused.value.response.status_code == 403
    for headers in (auth(), {**auth(), "Origin": FRIEND}):
        with connect(url, additional_headers=headers, open_timeout=30) as ws:
            ws.send(json.dumps({"type": "response.create", "input": "Hi", "max_output_tokens": 4}))
            while True:
                event = json.loads(ws.recv(timeout=120))
                if event["type"] in ("response.completed", "response.incomplete", "error"):
                    break
            assert event["type"] in ("response.completed", "response.incomplete"), event
