"""hearth quantize and hearth eval perplexity on the real packaged model."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.llama.model import LlamaModel
from server.llama.quantize import QuantizeError, quantize
from server.model_files import resolve_chat_model
from server.perplexity import PerplexityError, perplexity
from tests.conftest import ROOT, hearth_cli

TEXT = (ROOT / "README.md").read_text() + (ROOT / "docs" / "architecture.md").read_text()


@pytest.fixture(scope="module")
def q2k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize(
        resolve_chat_model(""),
        tmp_path_factory.mktemp("q") / "q2k.gguf",
        "q2_k",
        show_progress=False,
    )


def test_quantize_writes_a_loadable_model_of_the_type(tmp_path: Path) -> None:
    r = hearth_cli(
        "quantize",
        str(resolve_chat_model("")),
        str(tmp_path / "q8.gguf"),
        "--type",
        "q8_0",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    model = LlamaModel(tmp_path / "q8.gguf")
    try:
        assert model.metadata("general.file_type") == "7"  # LLAMA_FTYPE_MOSTLY_Q8_0
        assert model.tokenize("hello") == LlamaModel(resolve_chat_model("")).tokenize("hello")
    finally:
        model.close()


def test_quantize_errors(tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="unknown type"):
        quantize(resolve_chat_model(""), tmp_path / "x.gguf", "q9_9", show_progress=False)
    with pytest.raises(QuantizeError, match="not found"):
        quantize(tmp_path / "nope.gguf", tmp_path / "x.gguf", "q4_0", show_progress=False)
    src = resolve_chat_model("")
    with pytest.raises(QuantizeError, match="different file"):
        quantize(src, src, "q4_0", show_progress=False)


def test_perplexity_is_finite_and_worse_after_aggressive_quantization(q2k: Path) -> None:
    original, scored = perplexity(resolve_chat_model(""), TEXT, n_ctx=256, max_chunks=3)
    crushed, _ = perplexity(q2k, TEXT, n_ctx=256, max_chunks=3)
    assert scored == 3 * 128
    assert 1.0 < original < 1000.0
    assert original < crushed


def test_perplexity_needs_enough_text() -> None:
    with pytest.raises(PerplexityError, match="at least"):
        perplexity(resolve_chat_model(""), "too short", n_ctx=256)
