"""GET /: the built-in chat page, and the requests it makes, exactly as it makes them."""

from __future__ import annotations

import json
import re

import httpx

from tests.conftest import RunningServer


def test_the_page_is_served(server: RunningServer) -> None:
    r = httpx.get(f"{server.url}/", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<title>Hearth</title>" in page
    # Everything it calls is this server's own API (nothing from the network).
    paths = set(re.findall(r'fetch\("([^"]+)"', page))
    assert paths == {"/v1/models", "/v1/vector_stores", "/v1/chat/completions"}
    assert "http://" not in page and "https://" not in page


def test_the_pages_streaming_request_works(server: RunningServer, model_id: str) -> None:
    # The body the page sends (see chat.html), with a vector store chosen.
    store = httpx.post(f"{server.base_url}/vector_stores", json={"name": "page"}).json()
    body = {
        "model": model_id,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello!"},
        ],
        "temperature": 0.7,
        "stream": True,
        "stream_options": {"include_usage": True},
        "retrieval": {"vector_store_ids": [store["id"]]},
    }
    chunks = []
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    assert any(c["choices"] and c["choices"][0]["delta"].get("content") for c in chunks)
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage and "prompt_tokens_details" in usage[0]
    assert any("citations" in c for c in chunks)  # the page lists them (none here: empty store)
