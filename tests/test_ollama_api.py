"""Ollama's API on Hearth's port, through the official `ollama` Python client against the
live server: chat and generate (streamed and not), structured output from a pydantic
schema, a tool call and its result, embed, list, show and ps; errors in Ollama's shape."""

from __future__ import annotations

import json
import math

import httpx
import ollama
import pytest
from pydantic import BaseModel

from tests.conftest import RunningServer

GREEDY = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def client(server: RunningServer) -> ollama.Client:
    return ollama.Client(host=server.url)


@pytest.fixture(scope="module")
def names(client: ollama.Client, model_id: str) -> dict[str, str]:
    """The chat and embedding models' names as /api/tags lists them (id:latest)."""
    listed = {m.details.family: m.model for m in client.list().models}
    assert listed["llama"] == f"{model_id}:latest"
    return {"chat": listed["llama"], "embedding": listed["bert"]}


def test_list_show_ps_and_version(client: ollama.Client, names: dict[str, str]) -> None:
    chat = next(m for m in client.list().models if m.model == names["chat"])
    assert chat.size and chat.size > 10_000_000 and len(chat.digest or "") == 64
    assert chat.details.format == "gguf" and chat.details.parameter_size.endswith("M")
    assert chat.details.quantization_level.startswith(("Q", "F"))
    shown = client.show(names["chat"])
    assert "tools" in (shown.capabilities or []) and "completion" in shown.capabilities
    assert shown.modelinfo["general.architecture"] == "llama"
    assert "{%" in (shown.template or "")  # the model's own (Jinja) chat template
    assert client.show(names["embedding"]).capabilities == ["embedding"]
    running = {m.model: m for m in client.ps().models}
    assert running[names["chat"]].context_length == 2048
    assert running[names["chat"]].expires_at.year == 9999  # never unloaded
    version = httpx.get(f"{client._client.base_url}/api/version").json()["version"]
    assert tuple(int(x) for x in version.split(".")) >= (0, 5, 0)


def test_chat(client: ollama.Client, names: dict[str, str]) -> None:
    messages = [{"role": "user", "content": "Name three colours."}]
    r = client.chat(model=names["chat"], messages=messages, options=GREEDY)
    assert r.done and r.done_reason in ("stop", "length")
    assert r.message.role == "assistant" and r.message.content
    assert 0 < r.eval_count <= 12 and r.prompt_eval_count > 5
    assert r.total_duration >= r.eval_duration > 0 and r.prompt_eval_duration > 0
    # The bare id (without :latest) names the same model.
    bare = names["chat"].removesuffix(":latest")
    assert client.chat(model=bare, messages=messages, options=GREEDY).message.content


def test_chat_streamed(client: ollama.Client, names: dict[str, str]) -> None:
    messages = [{"role": "user", "content": "Count from one to ten."}]
    options = {"temperature": 0, "num_predict": 20}
    parts = list(client.chat(model=names["chat"], messages=messages, options=options, stream=True))
    *tokens, last = parts
    assert len(tokens) >= 5 and not any(p.done for p in tokens)
    assert "".join(p.message.content for p in tokens)
    assert last.done and last.done_reason == "length" and last.eval_count == 20
    assert last.message.content == ""


def test_generate_with_context_and_raw(client: ollama.Client, names: dict[str, str]) -> None:
    first = client.generate(model=names["chat"], prompt="My name is Ada.", options=GREEDY)
    assert first.response and first.done and first.context
    # The deprecated `context` carries the conversation on: the next prompt follows it.
    second = client.generate(
        model=names["chat"], prompt="What is my name?", context=first.context, options=GREEDY
    )
    assert second.prompt_eval_count > len(first.context)
    assert second.context[: len(first.context)] == first.context
    raw = client.generate(model=names["chat"], prompt="1, 2, 3, 4,", raw=True, options=GREEDY)
    assert raw.response and raw.prompt_eval_count < 12  # no chat template around it
    streamed = list(
        client.generate(model=names["chat"], prompt="Hello", options=GREEDY, stream=True)
    )
    assert streamed[-1].done and "".join(p.response for p in streamed[:-1])
    loaded = client.generate(model=names["chat"])  # an empty prompt: Ollama's "load"
    assert loaded.done and loaded.done_reason == "load"


class Country(BaseModel):
    name: str
    capital: str
    population_millions: int


def test_structured_output(client: ollama.Client, names: dict[str, str]) -> None:
    r = client.chat(
        model=names["chat"],
        messages=[{"role": "user", "content": "Tell me about France."}],
        format=Country.model_json_schema(),
        options={"temperature": 0, "num_predict": 200},
    )
    Country.model_validate_json(r.message.content)
    r = client.generate(
        model=names["chat"],
        prompt="List two fruits as JSON.",
        format="json",
        options={"temperature": 0, "num_predict": 100},
    )
    assert isinstance(json.loads(r.response), dict | list)


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
      city: The city's name
    """
    return f"Sunny and 21 degrees in {city}"


def test_tool_call_and_its_result(client: ollama.Client, names: dict[str, str]) -> None:
    messages: list[dict | ollama.Message] = [
        {"role": "user", "content": "What is the weather in Paris?"}
    ]
    options = {"temperature": 0, "num_predict": 64}
    r = client.chat(model=names["chat"], messages=messages, tools=[get_weather], options=options)
    (call,) = r.message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments, dict) and call.function.arguments.get("city")
    messages += [
        r.message,
        {
            "role": "tool",
            "content": get_weather(**call.function.arguments),
            "tool_name": "get_weather",
        },
    ]
    answer = client.chat(model=names["chat"], messages=messages, options=options)
    assert answer.done and answer.message.content
    streamed = list(
        client.chat(
            model=names["chat"],
            messages=messages[:1],
            tools=[get_weather],
            options=options,
            stream=True,
        )
    )
    calls = [c for p in streamed for c in (p.message.tool_calls or [])]
    assert [c.function.name for c in calls] == ["get_weather"] and streamed[-1].done


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_embed(client: ollama.Client, names: dict[str, str]) -> None:
    r = client.embed(model=names["embedding"], input=["The cat sat.", "Stock markets fell."])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 384
    assert all(abs(_norm(v) - 1) < 1e-3 for v in r.embeddings)
    assert r.prompt_eval_count > 4
    old = client.embeddings(model=names["embedding"], prompt="The cat sat.")
    cosine = sum(a * b for a, b in zip(old.embedding, r.embeddings[0], strict=True))
    assert cosine > 0.999
    long_text = "word " * 2000  # far past the model's 512 tokens
    assert len(client.embed(model=names["embedding"], input=long_text).embeddings[0]) == 384
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model=names["embedding"], input=long_text, truncate=False)
    assert e.value.status_code == 400 and "context length" in e.value.error


def test_errors_in_ollama_shape(
    client: ollama.Client, names: dict[str, str], server: RunningServer
) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="llama3:8b", messages=messages)
    assert e.value.status_code == 404 and 'model "llama3:8b" not found' in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model=names["chat"], input="x")
    assert e.value.status_code == 400 and "does not support embeddings" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("llama3")
    assert e.value.status_code == 400 and "does not pull models" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.delete(names["chat"])
    assert "does not delete models" in e.value.error
    with_image = [{"role": "user", "content": "What is this?", "images": [b"\x89PNG..."]}]
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model=names["chat"], messages=with_image)
    assert e.value.status_code == 400 and "images" in e.value.error
    r = httpx.post(
        f"{server.url}/api/chat",
        json={"model": names["chat"], "messages": messages, "options": {"temperature": "hot"}},
    )
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    assert "temperature" in r.json()["error"]
    # Checked where the request is turned into the chat service's: still a 400.
    stops = {"stop": [f"s{i}" for i in range(40)]}
    r = httpx.post(
        f"{server.url}/api/chat",
        json={"model": names["chat"], "messages": messages, "options": stops},
    )
    assert r.status_code == 400 and "stop" in r.json()["error"], r.text
