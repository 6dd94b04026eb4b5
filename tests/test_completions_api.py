"""/v1/completions (legacy text completions) through the official openai client."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import RunningServer

PROMPT = "The three primary colors are"


def n_tokens(server: RunningServer, text: str) -> int:
    body = {"content": text, "add_special": True}
    return len(httpx.post(f"{server.url}/tokenize", json=body).json()["tokens"])


def test_completion_shape_and_usage(
    client: openai.OpenAI, model_id: str, server: RunningServer
) -> None:
    r = client.completions.create(
        model=model_id, prompt=PROMPT, max_tokens=6, temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.object == "text_completion"
    assert r.id.startswith("cmpl-")
    assert r.choices[0].text
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == n_tokens(server, PROMPT)
    assert r.usage.completion_tokens == 6


def test_default_max_tokens_is_16(client: openai.OpenAI, model_id: str) -> None:
    r = client.completions.create(model=model_id, prompt=PROMPT, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16


def test_stream_equals_non_stream(client: openai.OpenAI, model_id: str) -> None:
    kwargs = dict(model=model_id, prompt=PROMPT, max_tokens=12, temperature=0)
    full = client.completions.create(**kwargs)
    chunks = list(
        client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == full.usage.total_tokens


def test_token_prompts_batch_prompts_and_echo(
    client: openai.OpenAI, model_id: str, server: RunningServer
) -> None:
    ids = httpx.post(f"{server.url}/tokenize", json={"content": PROMPT}).json()["tokens"]
    by_ids = client.completions.create(model=model_id, prompt=ids, max_tokens=5, temperature=0)
    by_text = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    many = client.completions.create(
        model=model_id, prompt=[PROMPT, "Once upon a time"], max_tokens=4, temperature=0
    )
    assert [c.index for c in many.choices] == [0, 1]
    assert (
        many.choices[0].text
        == client.completions.create(model=model_id, prompt=PROMPT, max_tokens=4, temperature=0)
        .choices[0]
        .text
    )
    echoed = client.completions.create(
        model=model_id, prompt=PROMPT, max_tokens=3, echo=True, temperature=0
    )
    assert echoed.choices[0].text.startswith(PROMPT)


def test_stop_in_completions(client: openai.OpenAI, model_id: str) -> None:
    kwargs = dict(model=model_id, prompt="1, 2, 3, 4,", max_tokens=20, temperature=0)
    text = client.completions.create(**kwargs).choices[0].text
    assert " 6" in text, text
    r = client.completions.create(**kwargs, stop=[" 6"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == text[: text.index(" 6")]


@pytest.mark.parametrize("prompt", ["", [], [[]], [10**9]])
def test_bad_prompts(client: openai.OpenAI, model_id: str, prompt: object) -> None:
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=model_id, prompt=prompt, max_tokens=2)  # type: ignore[arg-type]
