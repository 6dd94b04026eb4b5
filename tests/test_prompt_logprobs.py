"""echo + logprobs on /v1/completions: log-probabilities of the prompt's own tokens, the way
lm-evaluation-harness scores continuations (its local-completions model)."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from tests.conftest import RunningServer


def score(client: openai.OpenAI, model_id: str, prompt: str | list[int], **kw: object):
    return client.completions.create(
        model=model_id,
        prompt=prompt,
        echo=True,
        logprobs=kw.pop("logprobs", 2),
        max_tokens=kw.pop("max_tokens", 0),
        temperature=0,
        **kw,
    )


def test_every_prompt_token_is_scored(
    server: RunningServer, client: openai.OpenAI, model_id: str
) -> None:
    prompt = "The capital of France is Paris"
    r = score(client, model_id, prompt)
    choice = r.choices[0]
    n_prompt = len(httpx.post(f"{server.url}/tokenize", json={"content": prompt}).json()["tokens"])
    lp = choice.logprobs
    assert choice.text == prompt and "".join(lp.tokens) == prompt
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n_prompt
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x is not None and x <= 0 and math.isfinite(x) for x in lp.token_logprobs[1:])
    assert all(1 <= len(top) <= 2 for top in lp.top_logprobs[1:])
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert r.usage.prompt_tokens == n_prompt and r.usage.completion_tokens == 0


def test_loglikelihood_ranks_continuations(client: openai.OpenAI, model_id: str) -> None:
    good = score(client, model_id, "The capital of France is Paris").choices[0].logprobs
    bad = score(client, model_id, "The capital of France is banana").choices[0].logprobs
    assert good.token_logprobs[-1] > bad.token_logprobs[-1] + 3


def test_prompt_scores_match_sampled_scores_and_ignore_the_cache(
    server: RunningServer, client: openai.OpenAI, model_id: str
) -> None:
    ids = httpx.post(
        f"{server.url}/tokenize", json={"content": "A list of fruits: apple, banana,"}
    ).json()["tokens"]
    # What the model generates next, and its log-probability as a sampled token...
    gen = client.completions.create(
        model=model_id, prompt=ids, max_tokens=1, logprobs=1, temperature=0
    ).choices[0]
    token = httpx.post(f"{server.url}/tokenize", json={"content": gen.text}).json()["tokens"]
    # ...equals its score as the last prompt token (the prompt is in the cache by now,
    # yet every position is scored).
    for _ in range(2):
        lp = score(client, model_id, ids + token).choices[0].logprobs
        assert len(lp.token_logprobs) == len(ids) + len(token)
        assert lp.token_logprobs[-1] == pytest.approx(gen.logprobs.token_logprobs[0], abs=0.1)


def test_prompt_and_completion_together(client: openai.OpenAI, model_id: str) -> None:
    r = score(client, model_id, "Once upon a time", max_tokens=3, logprobs=1)
    lp = r.choices[0].logprobs
    assert r.usage.completion_tokens == 3
    assert len(lp.tokens) == r.usage.prompt_tokens + 3
    assert r.choices[0].text == "".join(lp.tokens)


def test_streaming_echo_with_logprobs_is_refused(server: RunningServer, model_id: str) -> None:
    body = {"model": model_id, "prompt": "Hi", "echo": True, "logprobs": 1, "stream": True}
    r = httpx.post(f"{server.base_url}/completions", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
