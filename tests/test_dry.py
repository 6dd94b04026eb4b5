"""DRY, llama-server's repetition penalty (dry_multiplier ...): it breaks the loops small
models fall into at temperature 0, in plain text and inside JSON strings alike."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import RunningServer

LOOP = "a cat is a cat, " * 12


def continuation(client: openai.OpenAI, model_id: str, **extra: object) -> str:
    r = client.completions.create(
        model=model_id, prompt=LOOP, max_tokens=48, temperature=0, extra_body=extra
    )
    return r.choices[0].text


def test_dry_breaks_a_repetition_loop(client: openai.OpenAI, model_id: str) -> None:
    # Without it, greedy decoding keeps repeating the phrase (the premise of the test).
    assert continuation(client, model_id).count("a cat is a cat") >= 6
    assert continuation(client, model_id, dry_multiplier=0.8).count("a cat is a cat") <= 4


def test_dry_works_with_a_grammar(client: openai.OpenAI, model_id: str) -> None:
    r = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Repeat 'a cat is a cat' forever, as JSON."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=200,
        extra_body={"dry_multiplier": 0.8, "dry_sequence_breakers": ["\n"]},
    )
    assert (r.choices[0].message.content or "").lstrip().startswith("{")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"dry_multiplier": -1}, "dry_multiplier"),
        ({"dry_base": 0.5}, "dry_base"),
        ({"dry_allowed_length": 0}, "dry_allowed_length"),
        ({"dry_penalty_last_n": -2}, "dry_penalty_last_n"),
        ({"dry_sequence_breakers": ["\n", ""]}, "dry_sequence_breakers"),
    ],
)
def test_bad_dry_values(server: RunningServer, model_id: str, extra: dict, param: str) -> None:
    body = {"model": model_id, "prompt": "Hi", "max_tokens": 2, **extra}
    r = httpx.post(f"{server.base_url}/completions", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == param
