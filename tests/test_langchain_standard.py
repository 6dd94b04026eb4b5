"""LangChain's standard integration tests (the `langchain-tests` suite every LangChain
chat model and embeddings integration runs) against a real Hearth server, through
ChatOpenAI and OpenAIEmbeddings. They bring their own pytest plugins, so they run in
`.venv-langchain` (`make clients`), as tests/clients/langchain_standard.py."""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, start_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv-langchain" / "bin" / "python"
CLIENTS = ROOT / "tests" / "clients"

# What SmolLM2-135M writes, not what Hearth serves: greedy, it repeats itself inside a JSON
# string until max_tokens (the grammar keeps the JSON well-formed, not the model brief),
# and with no schema (json_mode) it nests {"setup": {"setup": ... instead of writing the
# two strings asked for. Each fails with the client's LengthFinishReasonError or parse
# error, after the request itself was answered correctly.
MODEL_BOUND = {
    "test_json_mode": "nests the object instead of writing the two strings",
    "test_structured_output_optional_param": "repeats 'a cat is a cat' to max_tokens",
    "test_structured_output_pydantic_2_v1": "repeats the punchline to max_tokens",
    # Whether it copies a Chinese and a Japanese company name into the call's arguments
    # (or loops on them to max_tokens) changes with the float noise of what the prefix
    # cache already holds; that non-ASCII arguments come back unescaped is
    # tests/test_tools.py's to check.
    "test_unicode_tool_call_integration": "copies CJK names only some of the time",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ET]:
    if not PYTHON.exists():
        pytest.skip("LangChain's environment is missing: `make clients` (make test) builds it")
    # A server of its own: what the suite's greedy answers are does not depend on what
    # other tests left in the prefix cache.
    server = start_server(
        tmp_path_factory.mktemp("langchain-server"), "--n-ctx", "8192", "--parallel", "8"
    )
    try:
        yield _run_suite(server, tmp_path_factory)
    finally:
        stop_server(server)


def _run_suite(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> ET:
    model_id = server.model_id()
    models = httpx.get(f"{server.base_url}/models").json()["data"]
    embedding = next(m["id"] for m in models if m["meta"]["kind"] == "embedding")
    junit = tmp_path_factory.mktemp("langchain") / "junit.xml"
    test_class = "langchain_standard.py::TestHearthChat"
    command = [
        str(PYTHON),
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-c",
        str(CLIENTS / "langchain.ini"),
        "--rootdir",
        str(CLIENTS),
        "--confcutdir",
        str(CLIENTS),
        f"--junitxml={junit}",
        str(CLIENTS / "langchain_standard.py"),
        *(f"--deselect={test_class}::{name}" for name in MODEL_BOUND),
    ]
    env = {
        **os.environ,
        "HEARTH_URL": server.url,
        "HEARTH_CHAT_MODEL": model_id,
        "HEARTH_EMBEDDING_MODEL": embedding,
    }
    done = subprocess.run(
        command, cwd=CLIENTS, env=env, capture_output=True, text=True, timeout=600
    )
    assert junit.exists(), done.stdout[-4000:] + done.stderr[-4000:]
    return ET.parse(junit)


def outcomes(report: ET) -> dict[str, str]:
    out = {}
    for case in report.iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        out[name] = kinds[0] if kinds else "passed"
    return out


def test_langchain_standard_chat_and_embeddings_tests_pass(report: ET) -> None:
    seen = outcomes(report)
    failed = {name: kind for name, kind in seen.items() if kind in ("failure", "error")}
    assert not failed, failed
    passed = [name for name, kind in seen.items() if kind == "passed"]
    # The suite as configured: invoke, stream, batch, usage, stop sequences, forced tool
    # calls (also with no arguments, unicode and an agent loop), structured output by JSON
    # schema and by function calling, and the embeddings tests.
    assert sum(n.startswith("TestHearthChat::") for n in passed) >= 30, passed
    assert sum(n.startswith("TestHearthEmbeddings::") for n in passed) >= 5, passed
    for name in ("test_stream", "test_usage_metadata_streaming", "test_tool_calling"):
        assert any(n.startswith(f"TestHearthChat::{name}") for n in passed), name
