"""/v1/responses through the official client: text, instructions, streaming events,
function tools and their outputs, JSON schema output, previous_response_id, file_search."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import RunningServer
from tests.test_tools import WEATHER as CHAT_WEATHER

# The chat test's tool, in the Responses API's flat shape.
WEATHER = {"type": "function", **CHAT_WEATHER["function"]}


def test_text_response(client: openai.OpenAI, model_id: str) -> None:
    r = client.responses.create(
        model=model_id,
        instructions="You are a terse assistant.",
        input="Name a colour of the sky.",
        max_output_tokens=20,
        temperature=0,
    )
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status in ("completed", "incomplete")
    (item,) = r.output
    assert item.type == "message" and item.role == "assistant"
    assert r.output_text and r.output_text == item.content[0].text
    assert r.usage is not None and r.usage.output_tokens <= 20
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI, model_id: str) -> None:
    r = client.responses.create(
        model=model_id,
        input="Write a long story about a lighthouse.",
        max_output_tokens=5,
        temperature=0,
    )
    assert r.status == "incomplete"
    assert r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == 5


def test_streaming_events_build_the_same_text(client: openai.OpenAI, model_id: str) -> None:
    events = list(
        client.responses.create(
            model=model_id, input="Say hello.", max_output_tokens=30, temperature=0, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    for expected in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert expected in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    assert deltas == done.text
    assert events[-1].response.output_text == deltas


def test_stream_helper_accumulates(client: openai.OpenAI, model_id: str) -> None:
    # The helper wants response.completed, so ask for something short.
    with client.responses.stream(
        model=model_id, input="Reply with just the word yes.", max_output_tokens=100, temperature=0
    ) as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == deltas


def test_function_call_and_its_output(client: openai.OpenAI, model_id: str) -> None:
    first = client.responses.create(
        model=model_id,
        input="What is the weather in Oslo?",
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_output_tokens=200,
    )
    calls = [o for o in first.output if o.type == "function_call"]
    assert calls and first.status == "completed"
    call = calls[0]
    assert call.name == "get_weather" and call.call_id
    args = json.loads(call.arguments)
    assert args["unit"] in ("celsius", "fahrenheit")

    # Stateless: send the call and its output back as input items.
    second = client.responses.create(
        model=model_id,
        input=[
            {"role": "user", "content": "What is the weather in Oslo?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "3 C, snow"},
        ],
        tools=[WEATHER],
        temperature=0,
        max_output_tokens=60,
    )
    assert second.output

    # Stateful: the same through previous_response_id.
    third = client.responses.create(
        model=model_id,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "3 C, snow"}],
        tools=[WEATHER],
        temperature=0,
        max_output_tokens=60,
    )
    assert third.previous_response_id == first.id
    assert third.usage is not None and third.usage.input_tokens > first.usage.input_tokens


def test_streamed_function_call(client: openai.OpenAI, model_id: str) -> None:
    events = list(
        client.responses.create(
            model=model_id,
            input="What is the weather in Rome?",
            tools=[WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
            temperature=0,
            max_output_tokens=200,
            stream=True,
        )
    )
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert set(json.loads(done.arguments)) == {"city", "unit"}
    final = events[-1].response
    assert final.output[-1].type == "function_call"
    assert final.output[-1].arguments == done.arguments


def test_json_schema_text_format(client: openai.OpenAI, model_id: str) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
        "required": ["colour"],
        "additionalProperties": False,
    }
    r = client.responses.create(
        model=model_id,
        input="Pick a colour.",
        text={"format": {"type": "json_schema", "name": "pick", "schema": schema}},
        temperature=0,
        max_output_tokens=40,
    )
    assert json.loads(r.output_text)["colour"] in ("red", "green", "blue")


def test_previous_response_id_continues_and_get_delete(
    server: RunningServer, client: openai.OpenAI, model_id: str
) -> None:
    first = client.responses.create(
        model=model_id, input="My name is Astrid.", max_output_tokens=10, temperature=0
    )
    second = client.responses.create(
        model=model_id,
        previous_response_id=first.id,
        input="What is my name?",
        max_output_tokens=10,
        temperature=0,
    )
    # The first turn (and its answer) is part of the second prompt, and came from the cache.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 2
    assert client.responses.retrieve(first.id).id == first.id
    # Its input items: the first turn (asked and answered), then its own input; newest first.
    items = client.responses.input_items.list(second.id)
    texts = [item.content[0].text for item in items.data]
    assert texts == ["What is my name?", first.output_text, "My name is Astrid."]
    assert [item.role for item in items.data] == ["user", "assistant", "user"]
    assert items.data[0].type == "message" and items.data[0].content[0].type == "input_text"
    assert items.data[0].id and len({item.id for item in items.data}) == 3
    page = client.responses.input_items.list(second.id, order="asc", limit=1)
    assert [i.content[0].text for i in page.data] == ["My name is Astrid."] and page.has_more
    rest = client.responses.input_items.list(second.id, order="asc", after=page.data[0].id)
    assert [i.role for i in rest.data] == ["assistant", "user"] and not rest.has_more
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=model_id, previous_response_id=first.id, input="Hi")
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(first.id)


def test_file_search_over_a_vector_store(
    server: RunningServer, client: openai.OpenAI, model_id: str, tmp_path: Any
) -> None:
    doc = tmp_path / "kettle.md"
    doc.write_text("# Kettle\n\nThe Hearth kettle's warranty lasts three years from purchase.\n")
    store = client.vector_stores.create(name="responses-test")
    with doc.open("rb") as f:
        client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=f)
    r = client.responses.create(
        model=model_id,
        input="How long is the kettle's warranty?",
        tools=[{"type": "file_search", "vector_store_ids": [store.id]}],
        temperature=0,
        max_output_tokens=40,
    )
    search, message = r.output
    assert search.type == "file_search_call" and search.queries
    assert search.results is None  # not asked for
    annotations = message.content[0].annotations
    assert annotations and annotations[0].type == "file_citation"
    assert annotations[0].filename == "kettle.md"
    # include: file_search_call.results lists the chunks found, streamed or not.
    ask = {
        "model": model_id,
        "input": "How long is the kettle's warranty?",
        "tools": [{"type": "file_search", "vector_store_ids": [store.id]}],
        "include": ["file_search_call.results"],
        "max_output_tokens": 16,
    }
    with client.responses.stream(**ask) as stream:
        # (The answer may end incomplete at 16 tokens: the search item is what is looked at.)
        streamed = [
            e.item
            for e in stream
            if e.type == "response.output_item.done" and e.item.type == "file_search_call"
        ]
    for search in (client.responses.create(**ask).output[0], *streamed):
        results = search.results
        assert results and results[0].filename == "kettle.md"
        assert "three years" in (results[0].text or "") and results[0].score is not None
    assert len(streamed) == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": [{"role": "wizard", "content": "hi"}]}, "input.[0].role"),
        ({"input": [{"type": "input_image_x"}]}, "input.[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input.[0].[0].type",
        ),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools.[0].type"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        # Found by schemathesis over OpenAI's own schemas: a call_id that is no string.
        (
            {"input": [{"type": "custom_tool_call", "call_id": [None], "name": "x", "input": ""}]},
            "input.[0].call_id",
        ),
        (
            {"input": [{"type": "function_call", "call_id": 7, "name": "f", "arguments": "{}"}]},
            "input.[0].call_id",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": {}, "output": ""}]},
            "input.[0].call_id",
        ),
        (
            {"input": [{"type": "message", "id": ["m"], "role": "user", "content": "hi"}]},
            "input.id",
        ),
    ],
)
def test_bad_requests(server: RunningServer, model_id: str, body: dict, param: str) -> None:
    r = httpx.post(f"{server.base_url}/responses", json={"model": model_id, **body}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def wait_for(client: openai.OpenAI, response_id: str) -> Any:
    deadline = time.monotonic() + 120
    response = client.responses.retrieve(response_id)
    while response.status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
        response = client.responses.retrieve(response_id)
    return response


def test_a_background_response_is_queued_then_made(client: openai.OpenAI, model_id: str) -> None:
    queued = client.responses.create(
        model=model_id, input="Name three birds.", background=True, max_output_tokens=24
    )
    assert queued.status == "queued" and queued.background is True and queued.output == []
    done = wait_for(client, queued.id)
    assert done.status in ("completed", "incomplete") and done.background is True
    assert done.output_text and done.usage is not None and done.usage.output_tokens > 0
    # It continues like any stored response.
    follow_up = client.responses.create(
        model=model_id, previous_response_id=done.id, input="One more.", max_output_tokens=8
    )
    assert follow_up.usage.input_tokens > done.usage.input_tokens


def test_a_background_stream_can_be_dropped_and_picked_up(
    client: openai.OpenAI, model_id: str
) -> None:
    stream = client.responses.create(
        model=model_id,
        input="Tell a story about a fox.",
        background=True,
        stream=True,
        max_output_tokens=48,
        extra_body={"ignore_eos": True},
    )
    before = []
    for event in stream:
        before.append(event)
        if len(before) == 8:
            break
    stream.close()  # the connection is gone; the response goes on
    response_id = before[0].response.id
    after = list(
        client.responses.retrieve(
            response_id, stream=True, starting_after=before[-1].sequence_number
        )
    )
    numbers = [e.sequence_number for e in before + after]
    assert numbers == list(range(len(numbers)))  # nothing lost, nothing twice
    assert after[-1].type == "response.incomplete"
    text = "".join(e.delta for e in before + after if e.type == "response.output_text.delta")
    final = wait_for(client, response_id)
    assert final.usage.output_tokens == 48 and text == final.output_text
    # From the start again, whole.
    again = list(client.responses.retrieve(response_id, stream=True))
    assert [e.sequence_number for e in again] == numbers


def test_cancelling_a_background_response(
    server: RunningServer, client: openai.OpenAI, model_id: str
) -> None:
    long = client.responses.create(
        model=model_id,
        input="Tell a long story.",
        background=True,
        max_output_tokens=1000,
        extra_body={"ignore_eos": True},
    )
    while client.responses.retrieve(long.id).status == "queued":
        time.sleep(0.05)
    with pytest.raises(openai.BadRequestError):  # not finished: nothing to continue yet
        client.responses.create(model=model_id, previous_response_id=long.id, input="And?")
    cancelled = client.responses.cancel(long.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(long.id).status == "cancelled"
    deadline = time.monotonic() + 30
    while server.stats()["running"]:  # its sequence is free
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # Cancelling again changes nothing; a response not made in background is refused.
    assert client.responses.cancel(long.id).status == "cancelled"
    plain = client.responses.create(model=model_id, input="Hi", max_output_tokens=4)
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(plain.id)
    r = httpx.get(f"{server.base_url}/responses/{plain.id}", params={"stream": "true"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_0123456789abcdef01234567")


def test_output_text_logprobs_when_included(client: openai.OpenAI, model_id: str) -> None:
    asked = {
        "model": model_id,
        "input": "Say hello.",
        "max_output_tokens": 6,
        "temperature": 0,
        "include": ["message.output_text.logprobs"],
        "top_logprobs": 2,
    }
    part = client.responses.create(**asked).output[0].content[0]
    assert len(part.logprobs) == 6 and "".join(lp.token for lp in part.logprobs) == part.text
    for lp in part.logprobs:
        assert lp.logprob <= 0 and len(lp.top_logprobs) == 2
        assert lp.top_logprobs[0].logprob >= lp.top_logprobs[1].logprob
    streamed, final = [], None
    for event in client.responses.create(**asked, stream=True):
        if event.type == "response.output_text.delta":
            streamed += event.logprobs
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response
    assert [lp.token for lp in streamed] == [lp.token for lp in part.logprobs]
    assert final is not None and len(final.output[0].content[0].logprobs) == 6
    plain = client.responses.create(model=model_id, input="Say hello.", max_output_tokens=6)
    assert plain.output[0].content[0].logprobs == []  # only when asked


def test_logprobs_follow_the_open_responses_schema(server: RunningServer, model_id: str) -> None:
    from tests.open_responses_schema import ResponseResource
    from tests.test_responses_compliance import create

    body = {
        "model": model_id,
        "input": "Count to three.",
        "max_output_tokens": 8,
        "temperature": 0,
        "include": ["message.output_text.logprobs"],
        "top_logprobs": 3,
    }
    for stream in (False, True):  # (streamed: every event checked too)
        response = create(server, body, stream)
        ResponseResource.model_validate(response)
        part = response["output"][0]["content"][0]
        assert part["logprobs"] and "".join(lp["token"] for lp in part["logprobs"]) == part["text"]


def test_truncation_auto_drops_the_oldest_turns_to_fit(
    server: RunningServer, client: openai.OpenAI, model_id: str
) -> None:
    # The session server gives each request 2,048 tokens; this history is ~3,500.
    long = "The committee discussed the budget for the new library wing at length. " * 40
    turns: list[dict[str, Any]] = []
    for i in range(6):
        turns.append({"type": "message", "role": "user", "content": f"Part {i}: {long}"})
        turns.append({"type": "message", "role": "assistant", "content": f"Noted part {i}."})
    turns.append({"type": "message", "role": "user", "content": "Say OK."})
    body = {"model": model_id, "input": turns, "max_output_tokens": 8, "instructions": "Be brief."}
    refused = httpx.post(f"{server.base_url}/responses", json=body, timeout=60)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    fitted = client.responses.create(**body, truncation="auto")
    assert fitted.truncation == "auto" and fitted.output_text
    used = fitted.usage.input_tokens
    assert 2048 - 8 - 700 < used <= 2048 - 8  # only as much dropped as needed (a turn ~600)
    # What a request reads when fitted: the instructions and the newest turns.
    only_last = client.responses.create(
        model=model_id, input="Say OK.", max_output_tokens=8, instructions="Be brief."
    )
    assert used > only_last.usage.input_tokens


def test_input_tokens_are_counted_as_a_response_would_read_them(
    client: openai.OpenAI, model_id: str
) -> None:
    asked = {"model": model_id, "input": "Say hello.", "instructions": "Be brief."}
    counted = client.responses.input_tokens.count(**asked)
    assert counted.object == "response.input_tokens"
    first = client.responses.create(**asked, max_output_tokens=4)
    assert counted.input_tokens == first.usage.input_tokens
    follow = {"model": model_id, "previous_response_id": first.id, "input": "Again?"}
    counted = client.responses.input_tokens.count(**follow)
    assert (
        counted.input_tokens
        == client.responses.create(**follow, max_output_tokens=4).usage.input_tokens
    )
    with pytest.raises(openai.NotFoundError):
        client.responses.input_tokens.count(model=model_id, previous_response_id="resp_nothere")
