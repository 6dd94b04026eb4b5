"""JSON schema → GBNF: integer bounds, checked exhaustively against a regex reading of the
grammar (the served path is checked end to end in test_structured_output.py)."""

from __future__ import annotations

import re

import pytest

from server.chat.json_schema_grammar import SchemaError, integer_range_rule, json_schema_to_gbnf


def as_regex(rule: str) -> re.Pattern[str]:
    # The rule uses only "literals", [a-b] classes, spaces (sequence) and | (choice).
    body = rule.replace('"', "").replace(" ", "")
    return re.compile(f"(?:{body})")


@pytest.mark.parametrize(
    ("lo", "hi"),
    [(0, 8), (1, 10), (0, 120), (18, 99), (5, 5), (-5, 5), (-120, -7), (37, 4321), (0, 0)],
)
def test_bounded_ranges_admit_exactly_their_integers(lo: int, hi: int) -> None:
    pattern = as_regex(integer_range_rule(lo, hi))
    for n in range(-5000, 5001):
        assert bool(pattern.fullmatch(str(n))) == (lo <= n <= hi), (lo, hi, n)
    assert not pattern.fullmatch("007") and not pattern.fullmatch("-0")


@pytest.mark.parametrize(("lo", "hi"), [(0, None), (3, None), (None, -2), (None, 50), (-9, None)])
def test_half_bounded_ranges(lo: int | None, hi: int | None) -> None:
    pattern = as_regex(integer_range_rule(lo, hi))
    for n in [*range(-3000, 3001), 10**12, -(10**12)]:
        inside = (lo is None or n >= lo) and (hi is None or n <= hi)
        assert bool(pattern.fullmatch(str(n))) == inside, (lo, hi, n)


def test_schema_bounds_reach_the_grammar() -> None:
    gbnf = json_schema_to_gbnf(
        {
            "type": "object",
            "properties": {"legs": {"type": "integer", "minimum": 0, "exclusiveMaximum": 9}},
            "required": ["legs"],
        }
    )
    assert "[0-8]" in gbnf


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "minimum": 5, "maximum": 4},
        {"type": "integer", "minimum": "five"},
        {"$ref": "https://example.com/schema.json"},
        {"type": "wizard"},
    ],
)
def test_bad_schemas(schema: dict) -> None:
    with pytest.raises(SchemaError):
        json_schema_to_gbnf(schema)


def test_strings_admit_no_raw_control_characters() -> None:
    """JSON forbids a raw tab or newline inside a string: llama.cpp's grammar engine,
    given the converted schema, refuses the token after an open quote."""
    import numpy as np

    from server.llama.model import LlamaModel
    from server.llama.sampler import Candidates, grammar_sampler
    from server.model_files import resolve_chat_model

    gbnf = json_schema_to_gbnf(
        {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    )
    model = LlamaModel(resolve_chat_model(""))
    try:
        (tab,) = model.tokenize("\t", add_special=False)
        (letter,) = model.tokenize("a", add_special=False)

        def allowed_after_open_quote(token: int) -> bool:
            grammar = grammar_sampler(model.vocab, gbnf)
            try:
                for t in model.tokenize('{"name": "', add_special=False):
                    grammar.accept(t)
                one = Candidates(1)
                one.one(token)
                grammar.apply(one)
                return bool(np.isfinite(one.data["logit"][0]))
            finally:
                grammar.close()

        assert allowed_after_open_quote(letter)
        assert not allowed_after_open_quote(tab)
    finally:
        model.close()
