"""/v1/chat/completions through the official openai client against the real server."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

from tests.conftest import RunningServer

HELLO = [{"role": "user", "content": "Name three colors."}]


def tokenize(server: RunningServer, text: str, pieces: bool = False) -> list:
    body = {"content": text, "with_pieces": pieces, "parse_special": False}
    return httpx.post(f"{server.url}/tokenize", json=body).json()["tokens"]


def test_non_stream_shape_and_usage(
    client: openai.OpenAI, model_id: str, server: RunningServer
) -> None:
    r = client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=40, temperature=0)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == model_id
    assert r.created > 1_700_000_000
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage is not None
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # The completion's own tokens: retokenizing the text gives the same count, give or take
    # the end-of-generation token (counted, not shown) and BPE merging across boundaries.
    n_text = len(tokenize(server, choice.message.content))
    eos = 1 if choice.finish_reason == "stop" else 0
    assert abs(r.usage.completion_tokens - eos - n_text) <= 2
    # The prompt holds at least the user's words, and the template's framing around them.
    assert r.usage.prompt_tokens > len(tokenize(server, HELLO[0]["content"]))


def test_stream_matches_non_stream_and_ends_with_usage(
    client: openai.OpenAI, model_id: str
) -> None:
    kwargs = dict(model=model_id, messages=HELLO, max_tokens=30, temperature=0)
    full = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    content_chunks = chunks[:-1]
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text == full.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in content_chunks if c.choices[0].finish_reason]
    assert finish == [full.choices[0].finish_reason]
    assert all(c.usage is None for c in content_chunks)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == full.usage.completion_tokens
    assert last.usage.prompt_tokens == full.usage.prompt_tokens


def test_stream_without_include_usage_has_no_usage_chunk(
    client: openai.OpenAI, model_id: str
) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model_id, messages=HELLO, max_tokens=5, temperature=0, stream=True
        )
    )
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_raw_sse_wire_format(server: RunningServer, model_id: str) -> None:
    body = {"model": model_id, "messages": HELLO, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    data = [line for line in lines if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    assert len(data) >= 3


def test_max_tokens_gives_length(client: openai.OpenAI, model_id: str) -> None:
    r = client.chat.completions.create(
        model=model_id, messages=HELLO, max_tokens=4, extra_body={"ignore_eos": True}
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 4


def test_max_completion_tokens_is_honoured(client: openai.OpenAI, model_id: str) -> None:
    r = client.chat.completions.create(
        model=model_id, messages=HELLO, max_completion_tokens=3, extra_body={"ignore_eos": True}
    )
    assert r.usage.completion_tokens == 3


def _stop_across_tokens(server: RunningServer, text: str) -> str:
    """A stop string that starts inside one token and ends inside a later one."""
    pieces = [p["piece"] for p in tokenize(server, text, pieces=True)]
    offset = 0
    for i, piece in enumerate(pieces[:-1]):
        nxt = pieces[i + 1]
        if (
            isinstance(piece, str)
            and isinstance(nxt, str)
            and len(piece) >= 3
            and len(nxt) >= 2
            and i >= 2
        ):
            start = offset + len(piece) - 2
            stop = text[start : start + 4]
            if text.find(stop) == start:  # first occurrence, so the cut point is known
                return stop
        offset += len(piece) if isinstance(piece, str) else len(bytes(piece))
    pytest.fail(f"no usable token boundary in {text!r}")


def test_stop_string_split_across_tokens(
    client: openai.OpenAI, model_id: str, server: RunningServer
) -> None:
    story = [{"role": "user", "content": "Describe the ocean in two sentences."}]
    kwargs = dict(model=model_id, messages=story, temperature=0, max_tokens=40)
    text = client.chat.completions.create(**kwargs).choices[0].message.content
    stop = _stop_across_tokens(server, text)
    expected = text[: text.find(stop)]

    r = client.chat.completions.create(**kwargs, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == expected

    deltas = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**kwargs, stop=stop, stream=True)
        if c.choices
    ]
    assert "".join(deltas) == expected
    # Held back, never streamed then retracted: no delta carries any part of the stop text
    # beyond what the final answer keeps.
    assert all(stop not in d for d in deltas)


def test_logit_bias_bans_a_token(
    client: openai.OpenAI, model_id: str, server: RunningServer
) -> None:
    kwargs = dict(model=model_id, messages=HELLO, temperature=0, max_tokens=1)
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    banned = tokenize(server, first)
    assert len(banned) == 1
    r = client.chat.completions.create(**kwargs, logit_bias={str(banned[0]): -100})
    assert r.choices[0].message.content != first
    longer = client.chat.completions.create(
        **{**kwargs, "max_tokens": 30}, logit_bias={str(banned[0]): -100}
    )
    assert banned[0] not in tokenize(server, longer.choices[0].message.content)


def test_seed_reproducible_at_temperature(client: openai.OpenAI, model_id: str) -> None:
    kwargs = dict(
        model=model_id,
        messages=[{"role": "user", "content": "Tell me a story."}],
        temperature=1.0,
        max_tokens=24,
    )
    # llama.cpp's numbers depend slightly on how tokens were grouped into batches, and the
    # prefix cache reuses a prompt's KV however it was computed. One run first, so that the
    # seeded runs below find the prompt cached the same way.
    client.chat.completions.create(**kwargs, seed=1)
    a = client.chat.completions.create(**kwargs, seed=1234).choices[0].message.content
    b = client.chat.completions.create(**kwargs, seed=1234).choices[0].message.content
    assert a == b
    others = {
        client.chat.completions.create(**kwargs, seed=s).choices[0].message.content
        for s in (1, 2, 3)
    }
    assert others != {a}, "different seeds should not all give the same sample"


def test_n_choices(client: openai.OpenAI, model_id: str) -> None:
    r = client.chat.completions.create(
        model=model_id, messages=HELLO, n=2, max_tokens=8, seed=7, temperature=1.0
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices)
    chunks = list(
        client.chat.completions.create(
            model=model_id, messages=HELLO, n=2, max_tokens=8, stream=True
        )
    )
    finished = {c.choices[0].index for c in chunks if c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_content_parts_and_developer_role(client: openai.OpenAI, model_id: str) -> None:
    r = client.chat.completions.create(
        model=model_id,
        max_tokens=5,
        messages=[
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
        ],
    )
    assert r.choices[0].message.content is not None


def test_image_parts_are_a_clear_400(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=model_id,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                    ],
                }
            ],
        )
    assert "image_url" in str(e.value)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}},
            "modalities",
        ),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"web_search_options": {}}, "web_search_options"),
    ],
)
def test_outputs_a_text_model_cannot_give_are_a_clear_400(
    client: openai.OpenAI, model_id: str, extra: dict, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=4, **extra
        )
    assert e.value.param == param
    # Text alone, and the newer fields a client may send along, are fine.
    client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        modalities=["text"],
        service_tier="auto",
        prompt_cache_key="k",
        safety_identifier="u",
        reasoning_effort="low",
        verbosity="low",
    )


def test_stored_chat_completions(client: openai.OpenAI, model_id: str) -> None:
    """OpenAI's stored completions: `store: true` keeps one (streamed or not); it is
    listed (by model and metadata), retrieved, re-tagged, its messages read, deleted."""
    # Stored completions outlive the server (kept.db in its data directory): this run's
    # own tags, so what an earlier run kept is not listed with them.
    a1, b2 = f"a1-{uuid.uuid4().hex[:8]}", f"b2-{uuid.uuid4().hex[:8]}"
    ask = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]},
    ]
    kept = client.chat.completions.create(
        model=model_id, messages=ask, max_tokens=8, store=True, metadata={"run": a1}
    )
    stream = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Name a fruit."}],
        max_tokens=8,
        store=True,
        metadata={"run": b2},
        stream=True,
    )
    streamed_text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    streamed_id = next(iter(client.chat.completions.list(metadata={"run": b2}))).id
    not_kept = client.chat.completions.create(model=model_id, messages=ask, max_tokens=2)

    got = client.chat.completions.retrieve(kept.id)
    assert got.choices[0].message.content == kept.choices[0].message.content
    assert got.usage.completion_tokens == kept.usage.completion_tokens
    assert client.chat.completions.retrieve(streamed_id).choices[0].message.content == (
        streamed_text
    )
    listed = [c.id for c in client.chat.completions.list(model=model_id)]
    assert kept.id in listed and streamed_id in listed and not_kept.id not in listed
    assert [c.id for c in client.chat.completions.list(metadata={"run": a1})] == [kept.id]
    assert list(client.chat.completions.list(model="another-model")) == []

    messages = client.chat.completions.messages.list(kept.id)
    assert [m.role for m in messages.data] == ["system", "user"]
    assert messages.data[0].content == "Be brief." and messages.data[0].id == f"{kept.id}-0"
    assert messages.data[1].content is None
    assert messages.data[1].content_parts[0].text == "Name a colour."

    updated = client.chat.completions.update(kept.id, metadata={"run": a1, "ok": "yes"})
    assert updated.metadata == {"run": a1, "ok": "yes"}
    assert client.chat.completions.delete(kept.id).deleted
    assert client.chat.completions.delete(streamed_id).deleted
    for gone in (kept.id, not_kept.id):
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.retrieve(gone)
