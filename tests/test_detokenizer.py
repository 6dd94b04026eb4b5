"""Incremental text output: whole UTF-8 characters only, stop strings never leaked."""

from __future__ import annotations

import pytest

from server.engine.detokenizer import IncrementalDetokenizer, StopStringFilter
from server.llama.model import LlamaModel
from server.model_files import resolve_chat_model


@pytest.fixture(scope="module")
def model() -> LlamaModel:
    m = LlamaModel(resolve_chat_model(""))
    yield m
    m.close()


def test_stop_filter_holds_back_possible_prefix() -> None:
    f = StopStringFilter(["</answer>"])
    assert f.push("The result is 4") == ("The result is 4", False)
    assert f.push(" </ans") == (" ", False)  # "</ans" might start the stop string
    assert f.push("wer> trailing") == ("", True)


def test_stop_filter_releases_false_alarm() -> None:
    f = StopStringFilter(["STOP"])
    assert f.push("ST") == ("", False)
    assert f.push("AR") == ("STAR", False)
    assert f.push("S") == ("", False)
    assert f.flush() == "S"


def test_stop_filter_earliest_of_several() -> None:
    f = StopStringFilter(["bb", "a"])
    assert f.push("xxbbya") == ("xx", True)


def test_multibyte_characters_split_across_tokens(model: LlamaModel) -> None:
    text = "Grüße aus Köln 🌍🚀 — 日本語のテキスト"
    tokens = model.tokenize(text, add_special=False)
    pieces = [model.token_bytes(t) for t in tokens]
    # The test only means something if some token holds part of a character.
    assert any(_is_partial_utf8(p) for p in pieces)
    detok = IncrementalDetokenizer(model.token_bytes, [])
    deltas = [detok.push(t)[0] for t in tokens] + [detok.finish()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text


def test_stop_string_over_token_boundaries(model: LlamaModel) -> None:
    text = "alpha beta gamma delta"
    tokens = model.tokenize(text, add_special=False)
    detok = IncrementalDetokenizer(model.token_bytes, ["ta gam"])
    out = []
    for t in tokens:
        delta, stopped = detok.push(t)
        out.append(delta)
        if stopped:
            break
    assert stopped
    assert "".join(out) == "alpha be"


def _is_partial_utf8(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_stop_filter_names_the_stop_string_that_ended_the_text() -> None:
    f = StopStringFilter(["END", "\n\n", "Q:"])
    assert f.push("first line") == ("first line", False) and f.matched is None
    # Two stop strings in one piece: the earlier one ends the text (Anthropic's stop_sequence).
    assert f.push(" and Q: then END") == (" and ", True)
    assert f.matched == "Q:"
