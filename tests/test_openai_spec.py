"""Hearth's answers against OpenAI's own published schemas (tests/fixtures/openai_openapi.json,
cut from github.com/openai/openai-openapi by make_openai_schemas.py): every object and
stream event a client can get from the endpoints Hearth serves, as raw JSON on the wire.

The SDKs accept nearly anything; a stricter client (generated from the same document, or
a conformance suite) does not. What the document says is what is checked, except that an
optional field may be null (as the API sends it and the SDKs type it). Hearth's
documented extensions (search results' page, heading and offsets) are reported apart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import RunningServer
from tests.fixtures.make_openai_schemas import relaxed

OPENAPI = json.loads((Path(__file__).parent / "fixtures" / "openai_openapi.json").read_text())
DOCUMENT = {
    # "POST /chat/completions" -> the $ref of its 200 answer's schema
    "responses": {
        f"{method.upper()} {path}": ok["content"]["application/json"]["schema"]
        for path, operations in OPENAPI["paths"].items()
        for method, operation in operations.items()
        if "application/json"
        in (ok := operation.get("responses", {}).get("200", {})).get("content", {})
    },
    "components": {"schemas": relaxed(OPENAPI["components"]["schemas"])},
}
REGISTRY = Registry().with_resource("urn:openai", Resource(DOCUMENT, DRAFT202012))
# Fields Hearth adds to a search result (README: "Search results carry OpenAI's fields plus
# Hearth's ..."), where the document closes the object to extra fields.
SEARCH_EXTENSIONS = {"page", "chunk_index", "position", "heading", "char_start", "char_end"}


def violations(schema_ref: str, instance: Any) -> list[str]:
    validator = Draft202012Validator({"$ref": f"urn:openai{schema_ref}"}, registry=REGISTRY)
    out = []
    for error in validator.iter_errors(instance):
        leaves = list(_leaves(error))
        out.extend(f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in leaves)
    return out


def _leaves(error: Any) -> Iterator[Any]:
    """The deepest reasons (an anyOf's failure is its branches' failures)."""
    if not error.context:
        yield error
    for sub in error.context:
        yield from _leaves(sub)


def check(endpoint: str, body: Any) -> None:
    problems = violations(DOCUMENT["responses"][endpoint]["$ref"], body)
    assert not problems, f"{endpoint}:\n" + "\n".join(problems[:20])


def check_schema(name: str, body: Any) -> None:
    """`body` against a named schema; for a union (stream events), against the branch of
    its type, so a failure names what is wrong with it rather than with every branch."""
    schema = DOCUMENT["components"]["schemas"][name]
    branches = [b["$ref"] for b in schema.get("anyOf", []) + schema.get("oneOf", []) if "$ref" in b]
    if not branches:
        problems = violations(f"#/components/schemas/{name}", body)
    elif any(not violations(branch, body) for branch in branches):
        return
    else:
        typed = [b for b in branches if body.get("type") in _types(b)]
        problems = (
            violations(typed[0], body) if typed else [f"no {name} has type {body.get('type')!r}"]
        )
    assert not problems, f"{name} {body.get('type', '')}:\n" + "\n".join(problems[:20])


def _types(ref: str) -> list[str]:
    schema = DOCUMENT["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    kind = schema.get("properties", {}).get("type", {})
    return [*kind.get("enum", []), *([kind["const"]] if "const" in kind else [])]


def events(response: httpx.Response) -> list[dict[str, Any]]:
    return [
        json.loads(line[6:])
        for line in response.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=300) as client:
        yield client


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
DIAL = {
    "type": "custom",
    "custom": {
        "name": "dial",
        "format": {"type": "grammar", "grammar": {"syntax": "regex", "definition": r"\d{3}"}},
    },
}


def test_chat_completions_objects_and_chunks(http: httpx.Client, model_id: str) -> None:
    chat = {"model": model_id, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8}
    for extra in (
        {},
        {"n": 2, "logprobs": True, "top_logprobs": 2},
        {"tools": [WEATHER], "tool_choice": "required", "max_tokens": 40},
        {"tools": [DIAL], "tool_choice": "required", "max_tokens": 20},
    ):
        check(
            "POST /chat/completions", http.post("/chat/completions", json={**chat, **extra}).json()
        )
    for extra in (
        {"stream_options": {"include_usage": True}, "logprobs": True},
        {"tools": [WEATHER], "tool_choice": "required", "max_tokens": 40},
    ):
        chunks = events(http.post("/chat/completions", json={**chat, **extra, "stream": True}))
        assert len(chunks) > 2
        for chunk in chunks:
            check_schema("CreateChatCompletionStreamResponse", chunk)
    stored = http.post("/chat/completions", json={**chat, "store": True}).json()
    check(
        "GET /chat/completions/{completion_id}",
        http.get(f"/chat/completions/{stored['id']}").json(),
    )
    check("GET /chat/completions", http.get("/chat/completions", params={"limit": 2}).json())
    updated = http.post(f"/chat/completions/{stored['id']}", json={"metadata": {"k": "v"}})
    check("POST /chat/completions/{completion_id}", updated.json())
    gone = http.delete(f"/chat/completions/{stored['id']}").json()
    check("DELETE /chat/completions/{completion_id}", gone)


def test_completions_embeddings_models_and_errors(http: httpx.Client, model_id: str) -> None:
    completion = {"model": model_id, "prompt": "Once", "max_tokens": 5, "logprobs": 2}
    check("POST /completions", http.post("/completions", json=completion).json())
    embedded = http.post("/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ["a", "b"]})
    check("POST /embeddings", embedded.json())
    check("GET /models", http.get("/models").json())
    check("GET /models/{model}", http.get(f"/models/{model_id}").json())
    bad = http.post("/chat/completions", json={"model": model_id, "messages": []})
    assert bad.status_code == 400
    check_schema("ErrorResponse", bad.json())


def test_files_uploads_vector_stores_and_batches(http: httpx.Client, model_id: str) -> None:
    doc = b"# Pump\n\nError E1042 means the filter is clogged.\n"
    made = http.post("/files", files={"file": ("pump.md", doc)}, data={"purpose": "assistants"})
    file = made.json()
    check("POST /files", file)
    check("GET /files", http.get("/files", params={"limit": 3}).json())
    check("GET /files/{file_id}", http.get(f"/files/{file['id']}").json())

    upload = http.post(
        "/uploads",
        json={"bytes": 5, "filename": "u.txt", "mime_type": "text/plain", "purpose": "user_data"},
    ).json()
    check("POST /uploads", upload)
    part = http.post(f"/uploads/{upload['id']}/parts", files={"data": ("blob", b"hello")}).json()
    check("POST /uploads/{upload_id}/parts", part)
    done = http.post(f"/uploads/{upload['id']}/complete", json={"part_ids": [part["id"]]})
    check("POST /uploads/{upload_id}/complete", done.json())
    other = http.post(
        "/uploads",
        json={"bytes": 5, "filename": "v.txt", "mime_type": "text/plain", "purpose": "user_data"},
    ).json()
    check("POST /uploads/{upload_id}/cancel", http.post(f"/uploads/{other['id']}/cancel").json())

    store = http.post(
        "/vector_stores",
        json={"name": "spec", "expires_after": {"anchor": "last_active_at", "days": 3}},
    ).json()
    sid = store["id"]
    check("POST /vector_stores", store)
    check("GET /vector_stores", http.get("/vector_stores", params={"limit": 3}).json())
    check(
        "POST /vector_stores/{vector_store_id}",
        http.post(f"/vector_stores/{sid}", json={"name": "s2"}).json(),
    )
    attached = http.post(
        f"/vector_stores/{sid}/files", json={"file_id": file["id"], "attributes": {"k": "v"}}
    )
    check("POST /vector_stores/{vector_store_id}/files", attached.json())
    for _ in range(300):
        vsf = http.get(f"/vector_stores/{sid}/files/{file['id']}").json()
        if vsf["status"] != "in_progress":
            break
        time.sleep(0.1)
    assert vsf["status"] == "completed"
    check("GET /vector_stores/{vector_store_id}/files/{file_id}", vsf)
    check(
        "GET /vector_stores/{vector_store_id}/files", http.get(f"/vector_stores/{sid}/files").json()
    )
    changed = http.post(f"/vector_stores/{sid}/files/{file['id']}", json={"attributes": {"k": "w"}})
    check("POST /vector_stores/{vector_store_id}/files/{file_id}", changed.json())
    content = http.get(f"/vector_stores/{sid}/files/{file['id']}/content").json()
    check("GET /vector_stores/{vector_store_id}/files/{file_id}/content", content)
    found = http.post(f"/vector_stores/{sid}/search", json={"query": "E1042"}).json()
    assert found["data"]
    for hit in found["data"]:
        assert set(hit) >= SEARCH_EXTENSIONS  # Hearth's, documented
        for key in SEARCH_EXTENSIONS:
            hit.pop(key)
    check("POST /vector_stores/{vector_store_id}/search", found)
    batch = http.post(f"/vector_stores/{sid}/file_batches", json={"file_ids": [file["id"]]}).json()
    check("POST /vector_stores/{vector_store_id}/file_batches", batch)
    base = f"/vector_stores/{sid}/file_batches/{batch['id']}"
    check("GET /vector_stores/{vector_store_id}/file_batches/{batch_id}", http.get(base).json())
    check(
        "GET /vector_stores/{vector_store_id}/file_batches/{batch_id}/files",
        http.get(f"{base}/files").json(),
    )
    check(
        "POST /vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel",
        http.post(f"{base}/cancel").json(),
    )

    line = {
        "custom_id": "1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model_id,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
        },
    }
    batch_file = http.post(
        "/files",
        files={"file": ("b.jsonl", json.dumps(line).encode() + b"\n")},
        data={"purpose": "batch"},
    ).json()
    ask = {
        "input_file_id": batch_file["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    created = http.post("/batches", json=ask).json()
    check("POST /batches", created)
    for _ in range(300):
        finished = http.get(f"/batches/{created['id']}").json()
        if finished["status"] in ("completed", "failed"):
            break
        time.sleep(0.1)
    assert finished["status"] == "completed"
    check("GET /batches/{batch_id}", finished)
    check("GET /batches", http.get("/batches", params={"limit": 2}).json())
    second = http.post("/batches", json=ask).json()
    check("POST /batches/{batch_id}/cancel", http.post(f"/batches/{second['id']}/cancel").json())

    check(
        "DELETE /vector_stores/{vector_store_id}/files/{file_id}",
        http.delete(f"/vector_stores/{sid}/files/{file['id']}").json(),
    )
    check("DELETE /vector_stores/{vector_store_id}", http.delete(f"/vector_stores/{sid}").json())
    check("DELETE /files/{file_id}", http.delete(f"/files/{file['id']}").json())


def test_responses_and_conversations(http: httpx.Client, model_id: str) -> None:
    ask = {"model": model_id, "input": "Say hi", "max_output_tokens": 16, "store": True}
    first = http.post("/responses", json=ask).json()
    check("POST /responses", first)
    function = {
        "type": "function",
        "name": "get_weather",
        "parameters": WEATHER["function"]["parameters"],
    }
    custom = {
        "type": "custom",
        "name": "dial",
        "format": {"type": "grammar", "syntax": "regex", "definition": r"\d{3}"},
    }
    for tool in (function, custom):
        made = http.post(
            "/responses",
            json={**ask, "tools": [tool], "tool_choice": "required", "max_output_tokens": 40},
        )
        check("POST /responses", made.json())
        for event in events(
            http.post(
                "/responses",
                json={
                    **ask,
                    "stream": True,
                    "tools": [tool],
                    "tool_choice": "required",
                    "max_output_tokens": 40,
                },
            )
        ):
            check_schema("ResponseStreamEvent", event)
    for event in events(http.post("/responses", json={**ask, "stream": True})):
        check_schema("ResponseStreamEvent", event)
    check("GET /responses/{response_id}", http.get(f"/responses/{first['id']}").json())
    check(
        "GET /responses/{response_id}/input_items",
        http.get(f"/responses/{first['id']}/input_items").json(),
    )
    counted = http.post("/responses/input_tokens", json={"model": model_id, "input": "Say hi"})
    check("POST /responses/input_tokens", counted.json())
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    compacted = http.post("/responses/compact", json={"model": model_id, "input": history})
    check("POST /responses/compact", compacted.json())
    assert http.delete(f"/responses/{first['id']}").status_code == 200

    conversation = http.post(
        "/conversations", json={"items": [{"type": "message", "role": "user", "content": "hi"}]}
    ).json()
    cid = conversation["id"]
    check("POST /conversations", conversation)
    check("GET /conversations/{conversation_id}", http.get(f"/conversations/{cid}").json())
    renamed = http.post(f"/conversations/{cid}", json={"metadata": {"a": "b"}})
    check("POST /conversations/{conversation_id}", renamed.json())
    added = http.post(
        f"/conversations/{cid}/items",
        json={"items": [{"type": "message", "role": "user", "content": "more"}]},
    )
    check("POST /conversations/{conversation_id}/items", added.json())
    listed = http.get(f"/conversations/{cid}/items").json()
    check("GET /conversations/{conversation_id}/items", listed)
    item = listed["data"][0]["id"]
    check(
        "GET /conversations/{conversation_id}/items/{item_id}",
        http.get(f"/conversations/{cid}/items/{item}").json(),
    )
    check(
        "DELETE /conversations/{conversation_id}/items/{item_id}",
        http.delete(f"/conversations/{cid}/items/{item}").json(),
    )
    check("DELETE /conversations/{conversation_id}", http.delete(f"/conversations/{cid}").json())
