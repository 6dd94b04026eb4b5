"""Faults inside the server fail one request, never the thread that serves everyone, and
/health tells the truth when a thread is gone.

In-process over the real model: faults are injected by wrapping one engine method (no
client input is known to trigger them any more, which is the point); the HTTP side runs in
Starlette's test client.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from server.api.app import create_app
from server.engine import embedder as embedder_module
from server.engine.embedder import Embedder, EmbedderBusy, EmbedderError
from server.engine.request import FinishReason, GenerationOutput, GenerationRequest
from server.llama.model import LlamaModel
from server.llama.sampler import SamplingParams
from server.model_files import resolve_embedding_model
from server.runtime import Runtime
from server.settings import load_settings
from tests.conftest import start_server, stop_server
from tests.fixtures.tiny_gguf import write_tiny_model


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    settings = load_settings(
        overrides={
            "model": {"n_ctx": 1024, "context_length": 512},
            "engine": {"max_running": 4},
            "storage": {"data_dir": str(tmp_path)},
        },
        environ={},
    )
    rt = Runtime.load(settings)
    yield rt


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime), base_url="http://127.0.0.1") as c:
        yield c


class Collector:
    """A GenerationRequest's emit: keeps outputs, signals the last one."""

    def __init__(self) -> None:
        self.outputs: list[GenerationOutput] = []
        self.done = threading.Event()

    def __call__(self, output: GenerationOutput) -> None:
        self.outputs.append(output)
        if output.finished:
            self.done.set()

    @property
    def last(self) -> GenerationOutput:
        assert self.done.wait(60), "the request was never answered"
        return self.outputs[-1]


def request(runtime: Runtime, max_tokens: int = 8, **sampling: object) -> tuple:
    collector = Collector()
    prompt = runtime.model.tokenize("The capital of France is", add_special=True)
    req = GenerationRequest(
        prompt_tokens=prompt,
        max_tokens=max_tokens,
        emit=collector,
        sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
        ignore_eos=True,
    )
    return req, collector


def test_a_failing_step_ends_streams_with_an_error_and_done(
    client: TestClient, runtime: Runtime
) -> None:
    """A fault in the engine step itself (not one request's: those are in
    test_engine_steps.py) fails the requests it held; the thread, and later requests, go on."""
    engine = runtime.engine
    run = engine.runner.run

    def broken(plan, before_decode):  # type: ignore[no-untyped-def]
        raise RuntimeError("injected fault")

    engine.runner.run = broken  # type: ignore[method-assign]
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
    ) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert '"error"' in lines[-2] and lines[-1] == "data: [DONE]"
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    engine.runner.run = run  # type: ignore[method-assign]
    r = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 3},
    )
    assert r.status_code == 200
    assert engine.alive and client.get("/health").status_code == 200
    stats = client.get("/stats").json()
    assert stats["running"] == 0 and stats["cells_used"] == stats["cache_cells"]


def test_health_says_503_when_the_engine_thread_is_gone(
    client: TestClient, runtime: Runtime
) -> None:
    engine = runtime.engine

    def fatal() -> None:
        raise SystemExit("injected: the thread itself fails")

    engine._step_batch = fatal  # type: ignore[method-assign]
    waiting, waiting_out = request(runtime)
    engine.submit(waiting)
    # The request that was in the engine is answered, not left hanging.
    assert waiting_out.last.finish_reason is FinishReason.ERROR
    deadline = time.monotonic() + 10
    while engine.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    r = client.get("/health")
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable"
    assert any("injected" in reason for reason in r.json()["reasons"])
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 503 and "injected" in r.json()["error"]["message"]


def test_health_names_a_dead_embedder_and_ingestion_worker(runtime: Runtime) -> None:
    app = create_app(runtime)

    async def crashing_worker() -> None:
        raise RuntimeError("injected: the worker crashed")

    runtime.retrieval.worker.run = crashing_worker
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert runtime.embedder is not None
        embedder = runtime.embedder
        tokens = embedder.model.tokenize("hi", add_special=True)

        def fatal(taken):  # type: ignore[no-untyped-def]
            raise SystemExit("injected: the embedding thread fails")

        embedder._compute = fatal  # type: ignore[method-assign]
        with pytest.raises(EmbedderError):  # its caller is answered, not left waiting
            embedder.submit([tokens]).result(timeout=30)
        r = client.get("/health")
        assert r.status_code == 503
        reasons = " | ".join(r.json()["reasons"])
        assert "ingestion worker stopped" in reasons and "worker crashed" in reasons
        assert "embedding thread stopped" in reasons
        r = client.post("/v1/embeddings", json={"input": "hello"})
        assert r.status_code == 503


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedder]:
    path = resolve_embedding_model("", tmp_path_factory.mktemp("emb"))
    e = Embedder(LlamaModel(path), n_ctx=512, n_seq_max=32, n_threads=2)
    e.start()
    yield e
    e.stop()
    e.model.close()


def test_a_failed_embedding_batch_fails_every_job_in_it(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = embedder.model.tokenize("hello world", add_special=True)
    gate = threading.Event()
    original = embedder._compute
    calls = 0

    def failing_once(taken):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        gate.wait(10)  # let every job queue up behind the first batch
        if calls == 1:
            raise RuntimeError("injected batch failure")
        return original(taken)

    monkeypatch.setattr(embedder, "_compute", failing_once)
    first = embedder.submit([tokens])
    jobs = [embedder.submit([tokens, tokens]) for _ in range(4)]
    gate.set()
    outcomes = []
    for future in [first, *jobs]:
        try:
            outcomes.append(future.result(timeout=30).shape)
        except EmbedderError as e:
            outcomes.append(str(e))
    assert outcomes[0] == "injected batch failure"  # and nobody waited forever
    monkeypatch.setattr(embedder, "_compute", original)
    assert embedder.submit([tokens]).result(timeout=30).shape == (1, embedder.dim)
    assert embedder.alive


def test_the_embedding_queue_is_bounded(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedder_module, "MAX_PENDING_INPUTS", 4)
    tokens = embedder.model.tokenize("hello", add_special=True)
    futures: list[concurrent.futures.Future] = []
    with pytest.raises(EmbedderBusy):
        for _ in range(100):
            futures.append(embedder.submit([tokens, tokens]))
    for future in futures:
        future.result(timeout=30)
    assert embedder.submit([tokens]).result(timeout=30).shape == (1, embedder.dim)


def test_a_model_without_bos_or_eos_is_served(tmp_path: Path) -> None:
    """llama.cpp reports -1 for both; the template's bos/eos text, tokenizing with specials
    and a grammar that completes all used to hand that -1 to a call that aborts."""
    model_path = write_tiny_model(tmp_path / "tiny.gguf")
    model = LlamaModel(model_path)
    try:
        assert model.bos_token is None and model.eos_token is None and not model.eog_tokens
        assert model.token_text(model.eos_token) == "" and model.token_text(-1) == ""
        assert model.tokenize("bad cafe", add_special=True)  # no BOS to add, no abort
        with pytest.raises(ValueError):
            model.token_bytes(-1)
    finally:
        model.close()
    server = start_server(tmp_path, "--model", str(model_path), "--n-ctx", "512")
    try:
        base = server.base_url
        r = httpx.post(f"{base}/completions", json={"prompt": "bad", "max_tokens": 5}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
        # The grammar is complete after "ab" and the model has no end token to emit.
        r = httpx.post(
            f"{base}/completions",
            json={"prompt": "bad", "max_tokens": 20, "grammar": 'root ::= "ab"'},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["text"] == "ab" and choice["finish_reason"] == "stop"
        chat = {"messages": [{"role": "user", "content": "bad"}], "max_tokens": 3}
        assert httpx.post(f"{base}/chat/completions", json=chat, timeout=60).status_code == 200
        assert httpx.get(f"{server.url}/health").status_code == 200
    finally:
        stop_server(server)
