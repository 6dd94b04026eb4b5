"""LlamaIndex through `OpenAILike` and `OpenAILikeEmbedding` with the settings README
shows: chat, a stream, a function-calling step and a small RAG pipeline whose index is
embedded by Hearth and whose answer Hearth writes. LlamaIndex runs in its own environment
(`make clients`: its OpenAI integration needs openai<3), as tests/clients/llamaindex_check.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv-llamaindex" / "bin" / "python"


@pytest.fixture(scope="module")
def seen(server: RunningServer, model_id: str) -> dict:
    if not PYTHON.exists():
        pytest.skip("LlamaIndex's environment is missing: `make clients` (make test) builds it")
    models = httpx.get(f"{server.base_url}/models").json()["data"]
    embedding = next(m["id"] for m in models if m["meta"]["kind"] == "embedding")
    script = ROOT / "tests" / "clients" / "llamaindex_check.py"
    done = subprocess.run(
        [str(PYTHON), str(script), server.url, model_id, embedding],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_chat_stream_and_complete(seen: dict) -> None:
    assert seen["chat"] and seen["complete"]
    deltas = [d for d in seen["stream_deltas"] if d]
    assert len(deltas) > 3


def test_function_calling_step(seen: dict) -> None:
    assert seen["tool_calls"] == [["multiply", {"a": 6, "b": 7}]]
    assert seen["after_tool"]


def test_rag_pipeline(seen: dict) -> None:
    # Hearth's embeddings put the one passage with the answer first of four ...
    assert seen["rag_sources"] and "ZEBRA-4471" in seen["rag_sources"][0]
    # ... and the model, shown it, answers with it.
    assert "ZEBRA-4471" in seen["rag_answer"]
