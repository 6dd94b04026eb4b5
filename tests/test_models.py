"""Many chat models, one server (issue 18): models from a folder and from config, loaded on
demand, unloaded least-recently-used past models.max_loaded and after keep_alive, pinned
ones kept, an unusable file listed with its reason; all against live servers on real
GGUFs that need no download (the default Q8_0, the packaged Q4_1 under another id, and a
Q4_0 made from it by `hearth quantize`)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from server.llama.quantize import quantize
from server.model_files import packaged_chat_model
from tests.conftest import RunningServer, hearth_cli, start_server, stop_server


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """smol-q4 (the packaged Q4_1), smol-q40 (re-quantized to Q4_0), and a broken file."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "smol-q4.gguf").symlink_to(packaged_chat_model())
    (folder / "more").mkdir()
    quantize(packaged_chat_model(), folder / "more" / "smol-q40.gguf", "Q4_0", 2, False)
    (folder / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    # A whole header, cut data: it lists as a model and fails only when llama.cpp loads it.
    with packaged_chat_model().open("rb") as f:
        (folder / "truncated.gguf").write_bytes(f.read(20_000_000))
    return folder


def serve(tmp: Path, folder: Path, config: str) -> RunningServer:
    tmp.mkdir(parents=True, exist_ok=True)
    toml = tmp / "models.toml"
    toml.write_text(f'[models]\ndir = "{folder}"\n{config}')
    # The default data directory: where `make models` put the Q8_0 default model.
    return start_server(tmp, "--config", str(toml))


@pytest.fixture(scope="module")
def server2(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Iterator[RunningServer]:
    """The default model (pinned) and room for one more: max_loaded = 2, never idle out."""
    s = serve(tmp_path_factory.mktemp("two"), folder, "max_loaded = 2\nkeep_alive = -1\n")
    yield s
    stop_server(s)


def listing(server: RunningServer) -> dict[str, dict]:
    data = httpx.get(f"{server.base_url}/models").json()["data"]
    return {m["id"]: m["meta"] for m in data}


def ask(server: RunningServer, model: str, seed: int = 7, **kw: object):
    return server.client().chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Tell me a short fact about owls."}],
        max_tokens=16,
        temperature=1.0,
        seed=seed,
        **kw,
    )


def test_the_folder_is_listed_with_what_can_be_served(server2: RunningServer) -> None:
    models = listing(server2)
    default = server2.model_id()
    assert models[default]["loaded"] and models[default]["pinned"]
    for name in ("smol-q4", "smol-q40"):
        assert models[name]["kind"] == "chat" and not models[name]["loaded"]
        assert models[name]["size"] > 50_000_000 and models[name]["status"] == "unloaded"
    assert models["smol-q40"]["quantization"] == "Q4_0"
    broken = models["broken"]
    assert broken["status"] == "unusable" and "GGUF" in broken["problem"]
    with pytest.raises(openai.BadRequestError) as e:
        ask(server2, "broken")
    assert "cannot be served" in e.value.message
    with pytest.raises(openai.InternalServerError) as e:  # 503: the load failed
        ask(server2, "truncated")
    assert "could not be loaded" in e.value.message
    assert "could not load" in listing(server2)["truncated"]["load_error"]
    assert ask(server2, default).choices[0].message.content  # the others are unharmed


def test_each_model_answers_for_itself(server2: RunningServer) -> None:
    default = server2.model_id()
    a, b = ask(server2, default), ask(server2, "smol-q4")
    assert (a.model, b.model) == (default, "smol-q4")
    assert a.choices[0].message.content != b.choices[0].message.content
    assert listing(server2)["smol-q4"]["loaded"]


def test_least_recently_used_makes_room(server2: RunningServer) -> None:
    ask(server2, "smol-q4")
    ask(server2, "smol-q40")  # max_loaded 2: the default is pinned, so smol-q4 goes
    models = listing(server2)
    assert models["smol-q40"]["loaded"] and not models["smol-q4"]["loaded"]
    assert models[server2.model_id()]["loaded"]
    ask(server2, "smol-q4")  # and comes back, sending smol-q40 away
    models = listing(server2)
    assert models["smol-q4"]["loaded"] and not models["smol-q40"]["loaded"]


def test_a_load_does_not_stall_other_streams(server2: RunningServer) -> None:
    httpx.post(f"{server2.url}/models/unload", json={"model": "smol-q40"})
    arrivals: list[float] = []

    def stream() -> None:
        chunks = server2.client().chat.completions.create(
            model=server2.model_id(),
            messages=[{"role": "user", "content": "Write a long poem about the sea."}],
            max_tokens=200,
            extra_body={"ignore_eos": True},
            stream=True,
        )
        for _ in chunks:
            arrivals.append(time.monotonic())

    streaming = threading.Thread(target=stream)
    streaming.start()
    while len(arrivals) < 5:
        time.sleep(0.01)
    began = time.monotonic()
    loaded = httpx.post(f"{server2.url}/models/load", json={"model": "smol-q40"}, timeout=120)
    ended = time.monotonic()
    streaming.join()
    assert loaded.status_code == 200 and loaded.json()["meta"]["loaded"], loaded.text
    during = [t for t in arrivals if began <= t <= ended]
    # Tokens kept coming while the other model loaded (a stalled stream would show none).
    assert len(during) >= max(2, int((ended - began) / 0.5)), (ended - began, len(during))


def test_sixteen_requests_over_two_models(server2: RunningServer) -> None:
    models = [server2.model_id(), "smol-q40"] * 8
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda m: ask(server2, m), models))
    assert [a.model for a in answers] == models
    assert all(a.choices[0].message.content for a in answers)
    metrics = httpx.get(f"{server2.url}/metrics").text
    for model in set(models):  # per-model series
        assert f'hearth_requests_finished_total{{model="{model}"}}' in metrics


def test_explicit_load_and_unload(server2: RunningServer) -> None:
    r = httpx.post(f"{server2.url}/models/unload", json={"model": server2.model_id()})
    assert r.status_code == 400 and "pinned" in r.json()["error"]["message"]
    r = httpx.post(f"{server2.url}/models/load", json={"model": "nope"})
    assert r.status_code == 404
    r = httpx.post(f"{server2.url}/models/load", json={"model": "smol-q4"}, timeout=120)
    assert r.status_code == 200 and r.json()["meta"]["loaded"]
    r = httpx.post(f"{server2.url}/models/unload", json={"model": "smol-q4"})
    assert r.status_code == 200 and not r.json()["meta"]["loaded"]
    ps = httpx.get(f"{server2.url}/api/ps").json()["models"]
    assert "smol-q4:latest" not in [m["name"] for m in ps]
    running = next(m for m in ps if m["name"] == f"{server2.model_id()}:latest")
    assert running["requests_running"] == 0 and running["idle_seconds"] >= 0


def test_keep_alive_unloads_and_pinned_stays(tmp_path: Path, folder: Path) -> None:
    config = (
        "keep_alive = 2.0\n"
        "[[models.entries]]\n"
        f'path = "{folder / "more" / "smol-q40.gguf"}"\n'
        'alias = "kept"\n'
        "pinned = true\n"
        "n_ctx = 2048\n"
        "max_running = 2\n"
    )
    s = serve(tmp_path, folder, config)
    try:
        ask(s, "kept")
        ask(s, "smol-q4")
        assert listing(s)["smol-q4"]["loaded"]  # within its 2 s
        deadline = time.monotonic() + 15
        while listing(s)["smol-q4"]["loaded"] and time.monotonic() < deadline:
            time.sleep(0.2)
        models = listing(s)
        assert not models["smol-q4"]["loaded"]  # idle past keep_alive: gone
        assert models["kept"]["loaded"] and models["kept"]["pinned"]  # pinned: stays
        assert models["kept"]["context_length"] == 2048  # its own n_ctx
        tags = {m["name"] for m in httpx.get(f"{s.url}/api/tags").json()["models"]}
        # The entry's file is listed once, under its configured alias.
        assert {"smol-q4:latest", "kept:latest"} <= tags and "smol-q40:latest" not in tags
    finally:
        stop_server(s)


def test_cli_lists_the_folder(folder: Path) -> None:
    env = {**os.environ, "HEARTH_MODELS__DIR": str(folder), "HEARTH_SERVER__PORT": "9"}
    r = hearth_cli("models", "list", env=env)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("smol")}
    assert set(rows) == {"smol-q4", "smol-q40"} and " Q4_0 " in rows["smol-q40"]
    assert "unusable" in r.stdout and "load states unknown" in r.stdout


def test_an_unloaded_models_prefix_cache_comes_back(tmp_path: Path, folder: Path) -> None:
    """With cache.persist_dir, unloading saves the model's prefix cache (in a folder of its
    own) and loading restores it: the same long prompt is served from the cache again."""
    config = f'keep_alive = -1\n[cache]\npersist_dir = "{tmp_path / "kv"}"\n'
    s = serve(tmp_path, folder, config)
    try:
        messages = [{"role": "user", "content": "Remember this list: " + "apples, " * 120}]

        def cached() -> int:
            r = s.client().chat.completions.create(
                model="smol-q4", messages=messages, max_tokens=2, temperature=0
            )
            return r.usage.prompt_tokens_details.cached_tokens

        assert cached() == 0
        r = httpx.post(f"{s.url}/models/unload", json={"model": "smol-q4"}, timeout=60)
        assert r.status_code == 200 and not r.json()["meta"]["loaded"]
        assert any((tmp_path / "kv" / "smol-q4").iterdir())
        assert cached() > 200
    finally:
        stop_server(s)


def test_the_memory_budget_makes_room_and_refuses_what_cannot_fit(
    tmp_path: Path, folder: Path
) -> None:
    """models.memory_budget_mb counts each model's GGUF and KV cache (/v1/models shows the
    estimate): with room for the default and one more, a third sends the idle one away;
    a model larger than the whole budget is a 503 that says so."""
    probe = serve(tmp_path / "probe", folder, "")
    try:
        default_mb = listing(probe)[probe.model_id()]["memory_estimate"] >> 20
        ask(probe, "smol-q4")
        other_mb = listing(probe)["smol-q4"]["memory_estimate"] >> 20
    finally:
        stop_server(probe)
    budget = default_mb + other_mb + 20  # the default and one other, not two others
    s = serve(tmp_path / "budget", folder, f"keep_alive = -1\nmemory_budget_mb = {budget}\n")
    try:
        ask(s, "smol-q4")
        ask(s, "smol-q40")
        models = listing(s)
        assert models["smol-q40"]["loaded"] and not models["smol-q4"]["loaded"]
    finally:
        stop_server(s)
    tiny = serve(tmp_path / "tiny", folder, f"memory_budget_mb = {default_mb + 10}\n")
    try:
        with pytest.raises(openai.InternalServerError) as e:
            ask(tiny, "smol-q4")
        assert "models.memory_budget_mb" in e.value.message
    finally:
        stop_server(tiny)


def test_two_new_models_at_once_never_exceed_max_loaded(server2: RunningServer) -> None:
    """Both loads start together; with room for one beside the pinned default, the second
    waits until the first model's request is done, then takes its place."""
    for name in ("smol-q4", "smol-q40"):
        httpx.post(f"{server2.url}/models/unload", json={"model": name}, timeout=60)
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda m: ask(server2, m), ["smol-q4", "smol-q40"]))
    assert [a.model for a in answers] == ["smol-q4", "smol-q40"]
    loaded = [name for name, meta in listing(server2).items() if meta.get("loaded")]
    assert len(loaded) == 2 and server2.model_id() in loaded


def test_ollama_keep_alive_zero_unloads_after_the_request(server2: RunningServer) -> None:
    body = {
        "model": "smol-q4",
        "messages": [{"role": "user", "content": "Hi"}],
        "options": {"num_predict": 4},
        "keep_alive": 0,
        "stream": False,
    }
    r = httpx.post(f"{server2.url}/api/chat", json=body, timeout=120)
    assert r.status_code == 200 and r.json()["done"]
    deadline = time.monotonic() + 10
    while listing(server2)["smol-q4"]["loaded"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not listing(server2)["smol-q4"]["loaded"]
    body["keep_alive"] = "5m"  # the next request sets it back
    assert httpx.post(f"{server2.url}/api/chat", json=body, timeout=120).status_code == 200
    time.sleep(2.5)
    assert listing(server2)["smol-q4"]["loaded"]


def test_other_apis_name_models_too(server2: RunningServer) -> None:
    """The Responses API, Ollama's and Anthropic's reach a folder model by name; Ollama's
    show reads an unloaded model's template from its file."""
    httpx.post(f"{server2.url}/models/unload", json={"model": "smol-q40"}, timeout=60)
    shown = httpx.post(f"{server2.url}/api/show", json={"model": "smol-q40"}).json()
    assert "{%" in shown["template"] and shown["details"]["quantization_level"] == "Q4_0"
    r = server2.client().responses.create(model="smol-q40", input="Hello", max_output_tokens=8)
    assert r.model == "smol-q40" and r.output_text
    body = {"model": "smol-q4:latest", "prompt": "Hello", "stream": False}
    body["options"] = {"num_predict": 4}
    assert httpx.post(f"{server2.url}/api/generate", json=body, timeout=120).json()["done"]
    messages = {
        "model": "smol-q40",
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    m = httpx.post(f"{server2.url}/v1/messages", json=messages, timeout=120).json()
    assert m["model"] == "smol-q40" and m["usage"]["output_tokens"] >= 1
