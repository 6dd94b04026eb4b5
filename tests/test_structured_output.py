"""Structured output: response_format json_object / json_schema, and llama-server's
`grammar` and `json_schema` extensions, through the official client and LangChain."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from tests.conftest import RunningServer

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"type": "string", "enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "tags"],
    "additionalProperties": False,
}


def schema_format(schema: dict[str, Any] = PERSON) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}


def assert_person(text: str | None) -> dict[str, Any]:
    assert text is not None
    value = json.loads(text)
    assert set(value) == {"name", "age", "role", "tags"}
    assert isinstance(value["name"], str) and len(value["name"]) <= 20
    assert isinstance(value["age"], int) and 0 <= value["age"] <= 120
    assert value["role"] in ("admin", "user", "guest")
    assert isinstance(value["tags"], list) and len(value["tags"]) <= 3
    assert all(isinstance(t, str) for t in value["tags"])
    return value


def ask(client: openai.OpenAI, model_id: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Describe Ada, a user of our shop, as JSON."}],
        max_tokens=kwargs.pop("max_tokens", 200),
        **kwargs,
    )


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_is_followed(client: openai.OpenAI, model_id: str, temperature: float) -> None:
    r = ask(client, model_id, response_format=schema_format(), temperature=temperature, seed=3)
    assert r.choices[0].finish_reason == "stop"
    assert_person(r.choices[0].message.content)


def test_json_schema_streams(client: openai.OpenAI, model_id: str) -> None:
    stream = ask(client, model_id, response_format=schema_format(), temperature=0, stream=True)
    parts, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert finish == "stop" and len([p for p in parts if p]) > 3
    assert_person("".join(parts))


def test_json_object_gives_an_object(client: openai.OpenAI, model_id: str) -> None:
    r = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Reply with a short JSON object about a cat."}],
        response_format={"type": "json_object"},
        max_tokens=400,
        temperature=0.7,
        seed=1,
    )
    text = r.choices[0].message.content
    assert text is not None and text.lstrip().startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut by max_tokens: still nothing but JSON so far
        assert r.choices[0].finish_reason == "length" and "```" not in text


def test_several_choices_and_concurrent_plain_requests(
    server: RunningServer, model_id: str
) -> None:
    async def run() -> list[Any]:
        client = server.async_client()
        structured = client.chat.completions.create(
            model=model_id,
            messages=[{"role": "user", "content": "A person as JSON."}],
            response_format=schema_format(),
            temperature=1.0,
            n=3,
            max_tokens=200,
        )
        plain = [
            client.chat.completions.create(
                model=model_id,
                messages=[{"role": "user", "content": f"Tell me about the number {i}."}],
                max_tokens=30,
                temperature=0,
            )
            for i in range(3)
        ]
        return await asyncio.gather(structured, *plain)

    structured, *plain = asyncio.run(run())
    assert len(structured.choices) == 3
    for choice in structured.choices:
        assert choice.finish_reason == "stop"
        assert_person(choice.message.content)
    # The unconstrained requests beside them are not forced into JSON.
    assert any(not (p.choices[0].message.content or "").lstrip().startswith("{") for p in plain)


def test_grammar_extension_on_completions(client: openai.OpenAI, model_id: str) -> None:
    r = client.completions.create(
        model=model_id,
        prompt="Is the sky blue? Answer:",
        max_tokens=10,
        temperature=1.0,
        extra_body={"grammar": 'root ::= " yes" | " no"'},
    )
    assert r.choices[0].text in (" yes", " no")
    assert r.choices[0].finish_reason == "stop"


def test_json_schema_extension(client: openai.OpenAI, model_id: str) -> None:
    r = ask(client, model_id, temperature=0, extra_body={"json_schema": PERSON})
    assert_person(r.choices[0].message.content)


class Pet(BaseModel):
    name: str = Field(max_length=16)
    species: Literal["cat", "dog", "bird"]
    legs: int = Field(ge=0, le=8)


class Household(BaseModel):
    city: str = Field(max_length=20)
    pets: list[Pet] = Field(max_length=2)


def test_openai_parse_with_a_pydantic_model(client: openai.OpenAI, model_id: str) -> None:
    # The client turns the model into a strict schema with local $defs / $refs.
    r = client.chat.completions.parse(
        model=model_id,
        messages=[{"role": "user", "content": "Describe a household with pets."}],
        response_format=Household,
        temperature=0,
        max_tokens=300,
    )
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Household)
    assert all(pet.species in ("cat", "dog", "bird") for pet in parsed.pets)


def test_langchain_with_structured_output(server: RunningServer, model_id: str) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=server.base_url, api_key="unused", model=model_id, temperature=0, max_tokens=200
    )
    pet = llm.with_structured_output(Pet, method="json_schema").invoke("Describe a pet.")
    assert isinstance(pet, Pet)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"response_format": schema_format({"$ref": "https://example.com/s.json"})},
            "response_format.json_schema.schema",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": [1]}}},
            "response_format.json_schema.schema",
        ),
        ({"grammar": "root ::= ( unclosed"}, "grammar"),
        ({"grammar": 'start ::= "x"'}, "grammar"),  # no root rule
        ({"grammar": 'root ::= "x"', "json_schema": PERSON}, "json_schema"),
        ({"response_format": {"type": "json_object"}, "grammar": 'root ::= "x"'}, "grammar"),
        ({"json_schema": "not a schema"}, "json_schema"),
    ],
)
def test_bad_structured_output_requests(
    server: RunningServer, model_id: str, extra: dict[str, Any], param: str
) -> None:
    body = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], **extra}
    r = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
