"""Bad input gets a clear OpenAI-shaped error, and the server stays healthy: end to end,
through the official client (the validation matrix and error shapes of every status are
tested in-process in test_http_layer.py)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import RunningServer, start_server, stop_server


def post(server: RunningServer, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", timeout=30, **kwargs)  # type: ignore[arg-type]


def assert_openai_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")


def test_huge_prompt_is_context_length_exceeded(client: openai.OpenAI, model_id: str) -> None:
    huge = "word " * 5000  # well over the server's 2048-token context_length
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": huge}])
    assert e.value.code == "context_length_exceeded"
    assert "2048" in e.value.message
    # max_tokens that cannot fit beside a normal prompt is the same error, before any work.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=model_id, max_tokens=4000, messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.code == "context_length_exceeded"


def test_unknown_path_and_method(server: RunningServer) -> None:
    assert_openai_error(httpx.get(f"{server.url}/v1/nothing-here"), 404)
    # (GET /v1/chat/completions lists stored completions, as OpenAI's does.)
    assert_openai_error(httpx.put(f"{server.base_url}/chat/completions"), 405)
    assert_openai_error(httpx.get(f"{server.base_url}/embeddings"), 405)


def test_server_healthy_after_bad_input(
    server: RunningServer, client: openai.OpenAI, model_id: str
) -> None:
    for body in ({}, {"messages": 1}, {"prompt": None}):
        post(server, "/chat/completions", json=body)
        post(server, "/completions", json=body)
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    r = client.chat.completions.create(
        model=model_id, max_tokens=2, messages=[{"role": "user", "content": "hi"}]
    )
    assert r.choices[0].message.content is not None
    stats = server.stats()
    assert stats["running"] == 0 and stats["cells_used"] == stats["cache_cells"]


# A second server: one sequence, no waiting room, an API key and a strict chat template.
STRICT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] == 'assistant' %}"
    "{{ raise_exception('Conversations must start with a user message') }}"
    "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    s = start_server(
        tmp_path_factory.mktemp("tight"),
        "--parallel",
        "1",
        "--max-waiting",
        "0",
        "--n-ctx",
        "2048",
        "--chat-template",
        STRICT_TEMPLATE,
        api_key="sekret",
    )
    yield s
    stop_server(s)


def test_api_key_required(tight_server: RunningServer) -> None:
    r = httpx.get(f"{tight_server.base_url}/models")
    assert assert_openai_error(r, 401)["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=tight_server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert tight_server.client().models.list().data


def test_template_error_is_400_with_its_message(tight_server: RunningServer) -> None:
    client = tight_server.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=tight_server.model_id(), messages=[{"role": "assistant", "content": "hi"}]
        )
    assert "Conversations must start with a user message" in e.value.message


def test_full_queue_is_429_with_retry_after(tight_server: RunningServer) -> None:
    client = tight_server.client()
    model = tight_server.model_id()
    headers = {"Authorization": "Bearer sekret"}
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Write an essay."}],
        "max_tokens": 1000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{tight_server.base_url}/chat/completions", json=body, headers=headers
    ) as r:
        lines = r.iter_lines()
        next(lines)  # the one sequence is now busy
        busy = httpx.post(
            f"{tight_server.base_url}/chat/completions",
            json={**body, "stream": False},
            headers=headers,
        )
        assert_openai_error(busy, 429)
        assert busy.headers["retry-after"]
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model=model, max_tokens=2, messages=[{"role": "user", "content": "hi"}]
            )
    # Once it has gone, the server takes requests again.
    for _ in range(50):
        try:
            r2 = client.chat.completions.create(
                model=model, max_tokens=2, messages=[{"role": "user", "content": "hi"}]
            )
            break
        except openai.RateLimitError:
            import time

            time.sleep(0.1)
    assert r2.choices[0].finish_reason in ("stop", "length")
