"""/v1/responses against the Open Responses specification (issue 22): the compliance
suite's requests (openresponses/openresponses, `bin/compliance-test.ts`), every response
object and stream event validated against the spec's schema (tests/open_responses_schema.py),
the stream's wire framing, POST /v1/responses/compact, and the WebSocket mode."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import RunningServer
from tests.open_responses_schema import ResponseResource, StreamEvent

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a location",
    "parameters": {
        "type": "object",
        "properties": {
            "location": {
                "type": "string",
                "description": "The city and state, e.g. San Francisco, CA",
            }
        },
        "required": ["location"],
    },
}
WEATHER_ASK = [
    {"type": "message", "role": "user", "content": "What's the weather like in San Francisco?"}
]

# The compliance suite's requests (id -> body, streamed?). Each passes on the schema and
# the stream; whether a model with tool_choice "auto" calls the tool is its own choice,
# so those two are checked with tool_choice "required" as well.
TEMPLATES: dict[str, tuple[dict[str, Any], bool]] = {
    "basic-response": (
        {
            "input": [
                {"type": "message", "role": "user", "content": "Say hello in exactly 3 words."}
            ]
        },
        False,
    ),
    "streaming-response": (
        {"input": [{"type": "message", "role": "user", "content": "Count from 1 to 5."}]},
        True,
    ),
    "system-prompt": (
        {
            "input": [
                {
                    "type": "message",
                    "role": "system",
                    "content": "You are a pirate. Always respond in pirate speak.",
                },
                {"type": "message", "role": "user", "content": "Say hello."},
            ]
        },
        False,
    ),
    "tool-calling": ({"input": WEATHER_ASK, "tools": [WEATHER_TOOL]}, False),
    "tool-calling-streaming": ({"input": WEATHER_ASK, "tools": [WEATHER_TOOL]}, True),
    "multi-turn": (
        {
            "input": [
                {"type": "message", "role": "user", "content": "My name is Alice."},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": "Hello Alice! Nice to meet you. How can I help you today?",
                },
                {"type": "message", "role": "user", "content": "What is my name?"},
            ]
        },
        False,
    ),
}


def sse_events(text: str) -> list[dict[str, Any]]:
    """Parse a Responses stream the way the compliance suite does (LF-separated lines,
    `event:` and `data:` fields, a blank line ending each event) and check its framing:
    LF only, each event's name equal to its data's type, ending in `data: [DONE]`."""
    assert "\r" not in text, "events must be separated by LF"
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert blocks[-1] == "data: [DONE]"
    events = []
    for block in blocks[:-1]:
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(fields["data"])
        assert fields["event"] == data["type"]
        events.append(data)
    return events


def check_stream(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Every event valid, numbered 0, 1, 2, ...; returns the final response."""
    for i, event in enumerate(events):
        StreamEvent.validate_python(event)
        assert event["sequence_number"] == i
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete", "response.failed")
    return events[-1]["response"]


def create(server: RunningServer, body: dict[str, Any], stream: bool) -> dict[str, Any]:
    url = f"{server.base_url}/responses"
    r = httpx.post(url, json={**body, "stream": stream}, timeout=300)
    assert r.status_code == 200, r.text
    if not stream:
        return r.json()
    return check_stream(sse_events(r.text))


# The suite sends no max_output_tokens: a 135M model at the default temperature 1 may
# ramble to the end of the context, which would only make the test slow.
LIMIT = 64


@pytest.mark.parametrize("name", TEMPLATES)
def test_compliance_suite_requests(server: RunningServer, model_id: str, name: str) -> None:
    body, stream = TEMPLATES[name]
    body = {"model": model_id, "max_output_tokens": LIMIT, **body}
    response = create(server, body, stream)
    ResponseResource.model_validate(response)
    assert response["output"], "no output items"
    # Whether the model ends its answer (and whether it calls a tool with tool_choice
    # "auto") is its own choice: "completed", or "incomplete" at the limit.
    if response["status"] == "completed":
        assert response["completed_at"] >= response["created_at"]
    else:
        assert response["status"] == "incomplete" and response["completed_at"] is None
        assert response["incomplete_details"] == {"reason": "max_output_tokens"}
        assert response["usage"]["output_tokens"] == LIMIT
    if name.startswith("tool-calling"):
        # With "required" the call is Hearth's job, not the model's choice. Greedy: sampled
        # at temperature 1, a 135M model may fill the location string past the limit, and
        # a call cut off is no call.
        required = create(server, {**body, "tool_choice": "required", "temperature": 0}, stream)
        ResponseResource.model_validate(required)
        assert [o["type"] for o in required["output"]] == ["function_call"]
        # The schema's required string is there (what the grammar guarantees); what the
        # model writes in it, an empty string included, is its own choice.
        assert isinstance(json.loads(required["output"][0]["arguments"])["location"], str)
        assert required["status"] == "completed" and required["completed_at"] is not None
    # What was stored reads back in the same shape.
    stored = httpx.get(f"{server.base_url}/responses/{response['id']}").json()
    ResponseResource.model_validate(stored)
    assert stored == response


def test_file_search_with_a_vector_store(
    server: RunningServer, client: openai.OpenAI, model_id: str, tmp_path: Any
) -> None:
    """The suite's file_search check (--file-search-vector-store-id): a file_search_call
    item, and the tool echoed with every field the schema requires."""
    doc = tmp_path / "boiler.md"
    doc.write_text("# Boiler\n\nBleed the radiators every autumn before the heating season.\n")
    store = client.vector_stores.create(name="compliance")
    with doc.open("rb") as f:
        client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=f)
    tool = {"type": "file_search", "vector_store_ids": [store.id]}
    ask = "When should the radiators be bled?"
    for stream in (False, True):
        response = create(
            server,
            {"model": model_id, "input": ask, "tools": [tool], "max_output_tokens": 32},
            stream,
        )
        ResponseResource.model_validate(response)
        assert response["output"][0]["type"] == "file_search_call"
        (echoed,) = response["tools"]
        assert echoed["max_num_results"] == 4 and echoed["filters"] is None


def test_streamed_tool_call_events(server: RunningServer, model_id: str) -> None:
    body = {"model": model_id, "input": WEATHER_ASK, "tools": [WEATHER_TOOL], "stream": True}
    r = httpx.post(
        f"{server.base_url}/responses", json={**body, "tool_choice": "required"}, timeout=300
    )
    events = sse_events(r.text)
    check_stream(events)
    kinds = [(e["type"], e.get("item", {}).get("type")) for e in events]
    assert ("response.output_item.added", "function_call") in kinds
    assert ("response.output_item.done", "function_call") in kinds
    assert ("response.function_call_arguments.delta", None) in kinds
    assert ("response.function_call_arguments.done", None) in kinds


def test_echoed_fields(server: RunningServer, model_id: str) -> None:
    strict_tool = {**WEATHER_TOOL, "strict": True}
    response = create(
        server,
        {
            "model": model_id,
            "input": "Hi",
            "tools": [WEATHER_TOOL, strict_tool | {"name": "other"}],
            "max_output_tokens": 8,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.25,
            "top_logprobs": 0,
            "max_tool_calls": 3,
            "safety_identifier": "user-1",
            "prompt_cache_key": "docs",
            "metadata": {"k": "v"},
        },
        False,
    )
    ResponseResource.model_validate(response)
    assert [t["strict"] for t in response["tools"]] == [None, True]
    assert response["presence_penalty"] == 0.5 and response["frequency_penalty"] == 0.25
    assert response["max_tool_calls"] == 3 and response["safety_identifier"] == "user-1"
    assert response["prompt_cache_key"] == "docs" and response["metadata"] == {"k": "v"}
    assert response["background"] is False and response["service_tier"] == "default"


def test_unsupported_options_are_clear_errors(server: RunningServer, model_id: str) -> None:
    url = f"{server.base_url}/responses"
    image = {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "What do you see?"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},
        ],
    }
    for body, param in (
        ({"input": [image]}, "input.[0].[1].type"),  # a text-only model
        ({"input": "Hi", "background": True, "store": False}, "store"),
    ):
        r = httpx.post(url, json={"model": model_id, **body}, timeout=60)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and error["message"]


def test_compact_keeps_user_turns_and_summarises_the_rest(
    server: RunningServer, client: openai.OpenAI, model_id: str
) -> None:
    first = client.responses.create(
        model=model_id,
        input="My name is Alice and I keep bees in Lyon.",
        max_output_tokens=24,
        temperature=0,
    )
    r = httpx.post(
        f"{server.base_url}/responses/compact",
        json={
            "model": model_id,
            "previous_response_id": first.id,
            "input": [{"type": "message", "role": "user", "content": "Where do I live?"}],
        },
        timeout=300,
    )
    assert r.status_code == 200, r.text
    compacted = r.json()
    assert compacted["object"] == "response.compaction" and compacted["id"].startswith("resp_")
    output = compacted["output"]
    users = [o for o in output if o["type"] == "message"]
    assert [u["role"] for u in users] == ["user", "user"]
    assert "Lyon" in json.dumps(users[0])
    (summary,) = [o for o in output if o["type"] == "compaction"]
    assert summary["id"].startswith("cmp_") and summary["encrypted_content"]
    assert compacted["usage"]["output_tokens"] > 0
    # The compacted window is a valid input for the next turn.
    follow = client.responses.create(
        model=model_id, input=[*output, {"role": "user", "content": "Thanks."}], max_output_tokens=8
    )
    assert follow.status in ("completed", "incomplete")
    # The compaction route is not a response id, and unknown ids still answer 404.
    bad = httpx.post(f"{server.base_url}/responses/compact", json={"model": model_id}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"


def test_a_conversation_longer_than_the_context_can_still_be_compacted(
    server: RunningServer, model_id: str
) -> None:
    """What compaction is for: the session server's context is 2048 tokens, this history
    ~3,500. Its oldest turns are left out of what the summary reads (the user turns are all
    kept), instead of a context_length_exceeded."""
    history = []
    for day in range(120):
        history.append(
            {"role": "user", "content": f"Day {day}: the bees swarmed near hive {day} again."}
        )
        history.append(
            {"role": "assistant", "content": f"Noted for day {day}: check hive {day} at dawn."}
        )
    r = httpx.post(
        f"{server.base_url}/responses/compact",
        json={"model": model_id, "input": history},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    output = r.json()["output"]
    assert len([o for o in output if o["type"] == "message"]) == 120
    assert [o["type"] for o in output].count("compaction") == 1
    assert r.json()["usage"]["input_tokens"] <= 2048


def events_until_done(connection: Any) -> list[dict[str, Any]]:
    """A WebSocket-mode connection's messages up to the end of one response (or an error)."""
    events = []
    while True:
        events.append(json.loads(connection.recv_bytes()))
        if events[-1]["type"] in ("response.completed", "response.incomplete", "error"):
            return events


def test_websocket_mode_with_the_official_client(client: openai.OpenAI, model_id: str) -> None:
    """The SDK sends; the raw messages are validated (the SDK's own models would turn
    integers into floats)."""

    with client.responses.connect() as connection:
        ids: list[str] = []
        for text in ("Say hello.", "Say goodbye."):
            extra = {"previous_response_id": ids[-1]} if ids else {}
            connection.response.create(
                model=model_id, input=text, max_output_tokens=12, temperature=0, **extra
            )
            final = check_stream(events_until_done(connection))
            ResponseResource.model_validate(final)
            assert final["previous_response_id"] == (ids[-1] if ids else None)
            ids.append(final["id"])
        # A bad request on the socket is an error event; the socket stays usable.
        connection.send({"type": "response.create", "model": model_id, "input": []})
        (error,) = events_until_done(connection)
        StreamEvent.validate_python(error)
        assert error["error"]["param"] == "input"
        connection.send({"type": "nonsense"})  # type: ignore[typeddict-item]
        (error,) = events_until_done(connection)
        assert "response.create" in error["error"]["message"]
        connection.response.create(model=model_id, input="Hi", max_output_tokens=4)
        assert events_until_done(connection)[-1]["type"] in (
            "response.completed",
            "response.incomplete",
        )
        # Messages sent while earlier ones are answered wait their turn (past the read-ahead
        # of server/api/responses/websocket.py too), each answered in order.
        for i in range(7):
            connection.response.create(
                model=model_id, input="Hi", max_output_tokens=2, metadata={"n": str(i)}
            )
        for i in range(7):
            assert events_until_done(connection)[-1]["response"]["metadata"] == {"n": str(i)}


def test_a_websocket_client_that_leaves_mid_answer_frees_its_sequence(
    client: openai.OpenAI, model_id: str, server: RunningServer
) -> None:
    with client.responses.connect() as connection:
        long = {"input": "Write a very long story.", "max_output_tokens": 1900}  # ~20 s here
        connection.send({"type": "response.create", "model": model_id, **long, "ignore_eos": True})  # type: ignore[typeddict-item]
        for _ in range(5):
            assert json.loads(connection.recv_bytes())["type"] != "error"
        leaving = time.monotonic()
    assert time.monotonic() - leaving < 5  # the server answered the close at once
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        if httpx.get(f"{server.url}/stats").json()["running"] == 0:
            return
        time.sleep(0.2)
    pytest.fail("the engine still runs the answer of a client that left")


def test_a_client_giving_up_is_one_log_line(server: RunningServer, model_id: str) -> None:
    before = server.proc.log_text()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{server.base_url}/responses",
            json={
                "model": model_id,
                "input": "Write a very long story.",
                "max_output_tokens": 400,
                "ignore_eos": True,
            },
            timeout=0.5,
        )
    time.sleep(2)
    new = server.proc.log_text()[len(before) :]
    assert "Traceback" not in new and "CancelledError" not in new
    assert "client disconnected" in new
    # The server answers on.
    health = httpx.get(f"{server.url}/health", timeout=30)
    assert health.status_code == 200
