"""Anthropic's Messages API through the official `anthropic` SDK against the live server:
plain and streamed messages (the SDK's stream helper accumulates the final message), a
tool round trip, count_tokens, prefix-cache usage and errors in Anthropic's shape."""

from __future__ import annotations

import anthropic
import httpx
import pytest
from pydantic import BaseModel

from tests.conftest import RunningServer

WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city"}},
        "required": ["city"],
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
# The SDK no longer has sampling parameters; older clients send them, and Hearth takes them.
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def client(server: RunningServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)


def test_message(client: anthropic.Anthropic, model_id: str) -> None:
    m = client.messages.create(
        model=model_id,
        max_tokens=16,
        system="You are a terse assistant.",
        messages=[{"role": "user", "content": "Name a colour."}],
        extra_body=GREEDY,
    )
    assert m.type == "message" and m.role == "assistant" and m.model == model_id
    assert m.id.startswith("msg_") and m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens") and m.stop_sequence is None
    assert 0 < m.usage.output_tokens <= 16
    prompt = m.usage.input_tokens + m.usage.cache_read_input_tokens
    counted = client.messages.count_tokens(
        model=model_id,
        system=[{"type": "text", "text": "You are a terse assistant."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}],
    )
    assert counted.input_tokens == prompt > 10


def test_stop_sequences_and_max_tokens(client: anthropic.Anthropic, model_id: str) -> None:
    m = client.messages.create(
        model=model_id,
        max_tokens=64,
        messages=[{"role": "user", "content": "Write a sentence about the sea."}],
        stop_sequences=[" "],
        extra_body=GREEDY,
    )
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == " "
    assert " " not in m.content[0].text
    m = client.messages.create(
        model=model_id,
        max_tokens=3,
        messages=[{"role": "user", "content": "Write a long story."}],
        extra_body=GREEDY,
    )
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 3


class Country(BaseModel):
    name: str
    capital: str


def test_structured_output(client: anthropic.Anthropic, model_id: str) -> None:
    parsed = client.messages.parse(
        model=model_id,
        max_tokens=128,
        messages=[{"role": "user", "content": "Tell me about France."}],
        output_format=Country,
        extra_body=GREEDY,
    )
    assert isinstance(parsed.parsed_output, Country) and parsed.parsed_output.capital


def test_streamed_message(client: anthropic.Anthropic, model_id: str) -> None:
    with client.messages.stream(
        model=model_id,
        max_tokens=24,
        messages=[{"role": "user", "content": "Count from one to ten."}],
        extra_body=GREEDY,
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 3
    assert final.content[0].type == "text" and final.content[0].text == "".join(pieces)
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 24
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens > 10


def test_repeated_prompt_reads_the_cache(client: anthropic.Anthropic, model_id: str) -> None:
    system = "You answer questions about the garden. " + "Water the roses daily. " * 60
    ask = [{"role": "user", "content": "When do I water the roses?"}]
    first = client.messages.create(model=model_id, max_tokens=4, system=system, messages=ask)
    second = client.messages.create(model=model_id, max_tokens=4, system=system, messages=ask)
    total = first.usage.input_tokens + first.usage.cache_read_input_tokens
    assert second.usage.cache_read_input_tokens >= total - 2
    assert second.usage.input_tokens + second.usage.cache_read_input_tokens == total


def test_tool_round_trip(client: anthropic.Anthropic, model_id: str) -> None:
    m = client.messages.create(
        model=model_id,
        max_tokens=64,
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        extra_body=GREEDY,
    )
    assert m.stop_reason == "tool_use"
    (use,) = [b for b in m.content if b.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input, dict) and use.input.get("city")
    assert use.id.startswith("toolu_")
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 degrees"}
    answer = client.messages.create(
        model=model_id,
        max_tokens=32,
        messages=[
            *QUESTION,
            {"role": "assistant", "content": m.content},
            {"role": "user", "content": [result]},
        ],
        tools=[WEATHER],
        extra_body=GREEDY,
    )
    assert answer.content and answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    named = client.messages.create(
        model=model_id,
        max_tokens=64,
        messages=QUESTION,
        tools=[WEATHER, {**WEATHER, "name": "get_time"}],
        tool_choice={"type": "tool", "name": "get_time"},
    )
    assert [b.name for b in named.content if b.type == "tool_use"] == ["get_time"]
    plain = client.messages.create(
        model=model_id,
        max_tokens=8,
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice={"type": "none"},
    )
    assert plain.content[0].type == "text" and plain.stop_reason != "tool_use"


def test_streamed_tool_call(client: anthropic.Anthropic, model_id: str) -> None:
    with client.messages.stream(
        model=model_id,
        max_tokens=64,
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        extra_body=GREEDY,
    ) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "input_json" in events and final.stop_reason == "tool_use"
    (use,) = [b for b in final.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input.get("city")


def test_errors_in_anthropic_shape(
    client: anthropic.Anthropic, model_id: str, server: RunningServer
) -> None:
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="claude-not-served-here", max_tokens=8, messages=QUESTION)
    assert "claude-not-served-here" in e.value.message
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(
            model=model_id, max_tokens=8, messages=[{"role": "user", "content": [image]}]
        )
    assert "image" in e.value.message
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(
            model=model_id,
            max_tokens=64,
            messages=QUESTION,
            thinking={"type": "enabled", "budget_tokens": 32},
        )
    assert "thinking" in e.value.message
    r = httpx.post(f"{server.url}/v1/messages", json={"model": model_id, "messages": QUESTION})
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


def test_models_in_anthropic_shape(client: anthropic.Anthropic, model_id: str) -> None:
    """The SDK's models.list/retrieve (it sends anthropic-version): chat models only, typed,
    named, with an RFC 3339 creation time; OpenAI's clients still get OpenAI's list."""
    listed = client.models.list()
    assert [m.id for m in listed.data] == [model_id]
    (card,) = listed.data
    assert card.type == "model" and card.display_name == model_id
    assert card.created_at.tzinfo is not None
    assert listed.first_id == listed.last_id == model_id and listed.has_more is False
    assert client.models.retrieve(model_id).type == "model"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("no-such-model")
    plain = httpx.get(f"{str(client.base_url).rstrip('/')}/v1/models").json()
    assert len(plain["data"]) >= 2 and "type" not in plain["data"][0]
