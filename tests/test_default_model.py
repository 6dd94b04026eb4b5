"""`hearth models prepare` on the real packaged model: it measures whether Q8_0 serves faster
here with the same perplexity, records the choice, and the server loads that file while the
original stays available by its id."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.default_chat_model import (
    CHOICE_FILE,
    MAX_PERPLEXITY_RATIO,
    MIN_SPEEDUP,
    Measurement,
    read_choice,
    worth_switching,
)
from server.model_files import (
    ModelNotFound,
    known_chat_models,
    packaged_chat_model,
    resolve_chat_model,
)
from tests.conftest import hearth_cli, start_server, stop_server


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data_dir = tmp_path_factory.mktemp("prepared")
    env = {**os.environ, "HEARTH_STORAGE__DATA_DIR": str(data_dir)}
    r = hearth_cli("models", "prepare", timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "chat model:" in r.stdout and "embedding model:" in r.stdout
    yield data_dir


def test_the_choice_is_measured_and_recorded(prepared: Path) -> None:
    models = prepared / "models"
    original = packaged_chat_model()
    raw = json.loads((models / CHOICE_FILE).read_text())
    choice = read_choice(models, original)
    assert choice is not None and raw["chosen"] == choice.chosen
    assert choice.original is not None and choice.fast is not None
    assert choice.original.mix_seconds > 0 and choice.fast.mix_seconds > 0
    # Q8_0 of Q4_1 weights: the same model, so nearly the same perplexity, whatever the speed.
    assert abs(choice.fast.perplexity / choice.original.perplexity - 1) < 0.01
    assert 2 < choice.original.perplexity < 100
    # What the server loads by default follows the recorded choice.
    default = resolve_chat_model("", prepared)
    assert default.name == choice.chosen
    if choice.chosen != original.name:
        assert default.parent == models and default.is_file()
        assert worth_switching(choice.original, choice.fast)
    # The original is always there by its id; the fast file by its id when it was kept.
    assert resolve_chat_model("SmolLM2-135M-Instruct.Q4_1", prepared) == original
    assert set(known_chat_models(prepared)) >= {"SmolLM2-135M-Instruct.Q4_1"}
    with pytest.raises(ModelNotFound, match=r"known model ids: SmolLM2-135M-Instruct\.Q4_1"):
        resolve_chat_model("no-such-model", prepared)


def test_preparing_again_reuses_the_choice(prepared: Path) -> None:
    choice_file = prepared / "models" / CHOICE_FILE
    before = choice_file.stat().st_mtime_ns
    env = {**os.environ, "HEARTH_STORAGE__DATA_DIR": str(prepared)}
    r = hearth_cli("models", "prepare", timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert choice_file.stat().st_mtime_ns == before
    r = hearth_cli("models", "list", env=env)
    assert r.returncode == 0 and "SmolLM2-135M-Instruct.Q4_1\t" in r.stdout
    assert r.stdout.count("(default)") == 1


def test_a_choice_made_for_another_file_or_llama_cpp_is_ignored(tmp_path: Path) -> None:
    original = packaged_chat_model()
    models = tmp_path / "models"
    models.mkdir()
    (models / "SmolLM2-135M-Instruct.Q8_0.gguf").write_bytes(b"not used")
    for stale in ({"source_size": 1}, {"llama_cpp_python": "0.0.1"}, {"source": "other.gguf"}):
        record = {
            "chosen": "SmolLM2-135M-Instruct.Q8_0.gguf",
            "source": original.name,
            "source_size": original.stat().st_size,
            "llama_cpp_python": "0.3.36",
            **stale,
        }
        (models / CHOICE_FILE).write_text(json.dumps(record))
        assert read_choice(models, original) is None
        assert resolve_chat_model("", tmp_path) == original
    (models / CHOICE_FILE).write_text("{not json")
    assert resolve_chat_model("", tmp_path) == original


def test_the_rule_wants_clearly_faster_and_as_good() -> None:
    base = Measurement(mix_seconds=2.0, perplexity=40.0)
    assert worth_switching(base, Measurement(2.0 / (MIN_SPEEDUP + 0.05), 40.1))
    assert not worth_switching(base, Measurement(2.0 / (MIN_SPEEDUP - 0.05), 40.0))  # noise
    worse = 40.0 * MAX_PERPLEXITY_RATIO + 0.1
    assert not worth_switching(base, Measurement(0.5, worse))  # faster, but loses quality


def test_the_server_loads_the_chosen_file_and_the_original_by_id(
    prepared: Path, tmp_path: Path
) -> None:
    chosen = resolve_chat_model("", prepared)
    for args, expected in (([], chosen), (["--model", "SmolLM2-135M-Instruct.Q4_1"], None)):
        server = start_server(tmp_path, "--data-dir", str(prepared), *args)
        try:
            card = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"][0]
            path = Path(card["meta"]["path"])
            assert path == (expected or packaged_chat_model())
            assert card["id"] == path.name.removesuffix(".gguf")
            reply = server.client().chat.completions.create(
                model=card["id"], messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
            assert reply.usage is not None and reply.usage.completion_tokens > 0
            # Clients written for the packaged model's own id keep working.
            reply = server.client().chat.completions.create(
                model="SmolLM2-135M-Instruct.Q4_1",
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=4,
            )
            assert reply.model == card["id"]
        finally:
            stop_server(server)
