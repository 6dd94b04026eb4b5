"""Retrieval-augmented chat: answers drawn from a vector store, with citations."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import RunningServer, hearth_cli, start_server, stop_server
from tests.test_documents import write_pdf

FACT = "The access code for the Hearth vault is ZEBRA-4471."


@pytest.fixture(scope="module")
def rag(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str, str]]:
    tmp = tmp_path_factory.mktemp("ragchat")
    server = start_server(tmp, "--data-dir", str(tmp / "data"))
    client = server.client()
    store = client.vector_stores.create(name="vault")
    pdf = write_pdf(
        tmp / "vault.pdf",
        [
            "Chapter 1. The vault was built in 1998 from reinforced concrete.",
            f"Chapter 2. {FACT} Change it every spring.",
            "Chapter 3. Visitors must sign the guest book at the entrance.",
        ],
    )
    f = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id,
        file=("vault.pdf", io.BytesIO(pdf.read_bytes())),
        poll_interval_ms=100,
    )
    assert f.status == "completed"
    yield server, store.id, f.id
    stop_server(server)


def ask(server: RunningServer, store_id: str, **kwargs: object):
    return server.client().chat.completions.create(
        model=server.model_id(),
        messages=[{"role": "user", "content": "What is the access code for the vault?"}],
        max_tokens=24,
        temperature=0,
        extra_body={"retrieval": {"vector_store_ids": [store_id], "max_num_results": 2}},
        **kwargs,
    )


def test_answer_cites_the_right_file_and_page(rag) -> None:
    server, store_id, file_id = rag
    r = ask(server, store_id)
    cited = r.model_extra["citations"]
    assert cited and all(c["file_id"] == file_id for c in cited)
    fact_source = [c for c in cited if "ZEBRA-4471" in c["snippet"]]
    assert fact_source and fact_source[0]["page"] == 2 and fact_source[0]["filename"] == "vault.pdf"
    assert [c["index"] for c in cited] == list(range(1, len(cited) + 1))
    # The sources went into the prompt: far more prompt tokens than the bare question.
    bare = server.client().chat.completions.create(
        model=server.model_id(),
        max_tokens=1,
        messages=[{"role": "user", "content": "What is the access code for the vault?"}],
    )
    assert r.usage.prompt_tokens > bare.usage.prompt_tokens + 20


def test_streaming_carries_citations_before_done(rag) -> None:
    server, store_id, file_id = rag
    chunks = list(ask(server, store_id, stream=True))
    last = chunks[-1]
    assert last.choices == [] and last.model_extra["citations"][0]["file_id"] == file_id
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_repeated_questions_hit_the_prefix_cache(rag) -> None:
    server, store_id, _ = rag
    first = ask(server, store_id)
    again = ask(server, store_id)
    assert again.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 2


def test_unknown_store_is_404_and_empty_store_answers(rag) -> None:
    server, _, _ = rag
    with pytest.raises(openai.NotFoundError):
        ask(server, "vs_does_not_exist")
    empty = server.client().vector_stores.create(name="empty")
    r = ask(server, empty.id)
    assert r.model_extra["citations"] == []
    assert r.choices[0].message.content is not None


def test_requests_without_retrieval_are_unchanged(rag) -> None:
    server, _, _ = rag
    r = server.client().chat.completions.create(
        model=server.model_id(), max_tokens=3, messages=[{"role": "user", "content": "Hello"}]
    )
    assert "citations" not in (r.model_extra or {})


def test_bad_retrieval_options(rag, tmp_path: Path) -> None:
    server, store_id, _ = rag
    client = server.client()
    for options in (
        {"vector_store_ids": []},
        {"vector_store_ids": [store_id], "mode": "x"},
        {"vector_store_ids": [store_id], "filters": {"type": "near"}},
    ):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model=server.model_id(),
                max_tokens=2,
                extra_body={"retrieval": options},
                messages=[{"role": "user", "content": "Hi"}],
            )


def test_hearth_ask_cli(rag) -> None:

    server, _, _ = rag
    r = hearth_cli(
        "ask",
        "What is the access code for the vault?",
        "--store",
        "vault",
        "--url",
        server.url,
        "-k",
        "2",
        "--max-tokens",
        "24",
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "Sources:" in r.stdout and "vault.pdf, page 2" in r.stdout


def test_ollama_chat_answers_from_the_store(rag) -> None:
    """The same `retrieval` field on Ollama's /api/chat: sources in the prompt, citations
    on the last line."""
    server, store_id, file_id = rag
    body = {
        "model": server.model_id(),
        "messages": [{"role": "user", "content": "What is the access code for the vault?"}],
        "options": {"temperature": 0, "num_predict": 16},
        "retrieval": {"vector_store_ids": [store_id], "max_num_results": 2},
    }
    with httpx.stream("POST", f"{server.url}/api/chat", json=body, timeout=120) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    last = lines[-1]
    assert last["done"] and last["prompt_eval_count"] > 60
    assert any("ZEBRA-4471" in c["snippet"] for c in last["citations"])
    assert all(c["file_id"] == file_id for c in last["citations"])
