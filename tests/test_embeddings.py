"""/v1/embeddings with all-MiniLM-L6-v2 converted at install time, against the real server."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import RunningServer

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "minilm_reference.json").read_text())
EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def embed(client: openai.OpenAI, texts: list[str] | str) -> np.ndarray:
    r = client.embeddings.create(model=EMBEDDING_MODEL, input=texts)
    return np.array([d.embedding for d in r.data], dtype=np.float32)


def test_listed_beside_the_chat_model(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert EMBEDDING_MODEL in ids and len(ids) == 2


def test_matches_sentence_transformers(client: openai.OpenAI) -> None:
    ours = embed(client, REFERENCE["sentences"])
    theirs = np.array(REFERENCE["vectors"], dtype=np.float32)
    assert ours.shape == theirs.shape == (len(REFERENCE["sentences"]), 384)
    cosines = np.sum(ours * theirs, axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    )
    assert cosines.min() >= 0.99, dict(zip(REFERENCE["sentences"], cosines.round(4), strict=False))
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-4)


def test_paraphrases_score_higher_than_unrelated(client: openai.OpenAI) -> None:
    v = embed(
        client,
        [
            "How do I reset my password?",
            "I forgot my password and need to change it.",
            "Volcanoes erupt molten rock called lava.",
        ],
    )
    assert v[0] @ v[1] > 0.6 and v[0] @ v[2] < 0.2


def test_shape_usage_and_base64(client: openai.OpenAI, server: RunningServer) -> None:
    r = client.embeddings.create(model=EMBEDDING_MODEL, input=["hello world", "good night"])
    assert r.object == "list" and r.model == EMBEDDING_MODEL
    assert [d.index for d in r.data] == [0, 1] and r.data[0].object == "embedding"
    # [CLS] hello world [SEP] + [CLS] good night [SEP]
    assert r.usage.prompt_tokens == r.usage.total_tokens == 8
    raw = httpx.post(
        f"{server.base_url}/embeddings",
        json={"model": EMBEDDING_MODEL, "input": "hello world", "encoding_format": "base64"},
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, r.data[0].embedding, atol=1e-6)


def test_token_inputs(client: openai.OpenAI, server: RunningServer) -> None:
    text = embed(client, "hello world")[0]
    ids = [101, 7592, 2088, 102]  # [CLS] hello world [SEP] in the MiniLM vocabulary
    one = client.embeddings.create(model=EMBEDDING_MODEL, input=ids)
    many = client.embeddings.create(model=EMBEDDING_MODEL, input=[ids, [*ids[:2], 102]])
    assert np.allclose(one.data[0].embedding, text, atol=1e-4)
    assert len(many.data) == 2


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": ""}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"input": ["fine", ""]}, 400, "input"),
        ({"input": [[]]}, 400, "input"),
        ({"input": [[1, 2, 99999999]]}, 400, "input"),
        ({"input": ["x"] * 2049}, 400, "input"),
        ({"input": "word " * 600}, 400, "input"),
        ({"input": "hi", "dimensions": 128}, 400, "dimensions"),
        ({"input": "hi", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"input": 5}, 400, "input"),
        ({"input": "hi", "model": "text-embedding-3-small"}, 404, "model"),
        ({"input": "hi", "model": "SmolLM2-135M-Instruct.Q4_1"}, 404, "model"),
    ],
)
def test_bad_input(server: RunningServer, body: dict, status: int, param: str) -> None:
    r = httpx.post(f"{server.base_url}/embeddings", json={"model": EMBEDDING_MODEL, **body})
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


def test_too_long_says_why(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=EMBEDDING_MODEL, input="word " * 600)
    assert "512" in e.value.message and e.value.code == "context_length_exceeded"


def test_twenty_concurrent_requests(server: RunningServer, client: openai.OpenAI) -> None:
    texts = [f"Sentence number {i} about {'cats' if i % 2 else 'ships'}." for i in range(20)]
    expected = embed(client, texts)
    before = server.stats()["embeddings"]["batches"]

    async def main() -> list:
        c = server.async_client()
        return await asyncio.gather(
            *(c.embeddings.create(model=EMBEDDING_MODEL, input=[t, t.upper()]) for t in texts)
        )

    results = asyncio.run(main())
    for i, r in enumerate(results):
        assert np.allclose(r.data[0].embedding, expected[i], atol=1e-3)
    # Inputs of different requests shared llama.cpp calls.
    stats = server.stats()["embeddings"]
    assert stats["batches"] - before < 40
    assert stats["max_inputs_in_batch"] > 2


def test_langchain_openai_embeddings(server: RunningServer) -> None:
    from langchain_openai import OpenAIEmbeddings

    lc = OpenAIEmbeddings(
        model=EMBEDDING_MODEL,
        base_url=server.base_url,
        api_key="unused",
        check_embedding_ctx_length=False,
    )
    docs = lc.embed_documents(["A man is playing a guitar.", "The stock market fell."])
    query = lc.embed_query("Someone plays guitar.")
    assert len(docs) == 2 and len(query) == 384
    assert np.dot(query, docs[0]) > np.dot(query, docs[1])
