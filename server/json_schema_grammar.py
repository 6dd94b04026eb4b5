"""JSON schema → GBNF, with llama-cpp-python's converter plus integer bounds.

The converter in llama_cpp.llama_grammar ignores `minimum` / `maximum` on integers (a TODO
there), so a pydantic `Field(ge=0, le=8)` would let the model write 10 and the client's
validation fail. This adds them: a bounded integer becomes a digit-by-digit grammar that
admits exactly the numbers in range (the same construction as regex numeric ranges).
"""

from __future__ import annotations

import json
import math
from typing import Any

from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter

SPACE_RULE = '| " " | "\\n"{1,2} [ \\t]{0,20}'
# The converter's own limit: integers of at most 16 digits.
MAX_DIGITS = 16


class SchemaError(ValueError):
    """The schema cannot be turned into a grammar."""


def json_schema_to_gbnf(schema: dict[str, Any]) -> str:
    converter = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        resolved = converter.resolve_refs(schema, "input")
        converter.visit(resolved, "")
    except SchemaError:
        raise
    except AssertionError as e:  # the converter's way of refusing (remote $refs, ...)
        raise SchemaError(str(e)) from None
    except Exception as e:  # any converter failure is the schema's fault
        raise SchemaError(f"{type(e).__name__}: {e}") from None
    return converter.format_grammar()


class _Converter(SchemaConverter):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # llama.cpp's own converter (C++) lets JSON be pretty-printed; the Python one allows
        # a single space only, which pushes models that write indented JSON off course.
        self._rules["space"] = SPACE_RULE

    def visit(self, schema: Any, name: str) -> str:
        if isinstance(schema, dict) and schema.get("type") == "integer":
            lo, hi = integer_bounds(schema)
            if lo is not None or hi is not None:
                rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
                return self._add_rule(rule_name, f"({integer_range_rule(lo, hi)}) space")
        return super().visit(schema, name)


def integer_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    lo = hi = None
    try:
        if "minimum" in schema:
            lo = math.ceil(schema["minimum"])
        if "exclusiveMinimum" in schema:
            lo = max(
                lo if lo is not None else -math.inf, math.floor(schema["exclusiveMinimum"]) + 1
            )
        if "maximum" in schema:
            hi = math.floor(schema["maximum"])
        if "exclusiveMaximum" in schema:
            hi = min(hi if hi is not None else math.inf, math.ceil(schema["exclusiveMaximum"]) - 1)
    except (TypeError, ValueError, OverflowError):
        raise SchemaError(f"integer bounds must be numbers: {json.dumps(schema)}") from None
    if lo is not None and hi is not None and lo > hi:
        raise SchemaError(f"no integer satisfies {json.dumps(schema)}")
    return (None if lo is None else int(lo)), (None if hi is None else int(hi))


def integer_range_rule(lo: int | None, hi: int | None) -> str:
    """GBNF alternatives for the integers in [lo, hi] (None: unbounded), no leading zeros."""
    parts: list[str] = []
    if lo is None or lo < 0:
        # Negative numbers -n for n in [max(1, -hi), -lo].
        n_lo = 1 if hi is None or hi >= 0 else -hi
        n_hi = None if lo is None else -lo
        parts += [f'"-" {p}' for p in _non_negative(n_lo, n_hi)]
    if hi is None or hi >= 0:
        parts += _non_negative(max(lo or 0, 0), hi)
    return " | ".join(parts)


def _non_negative(lo: int, hi: int | None) -> list[str]:
    """Sequences for [lo, hi] with 0 <= lo; hi None: no upper bound (up to MAX_DIGITS)."""
    top = 10**MAX_DIGITS - 1 if hi is None else hi
    out: list[str] = []
    for digits in range(len(str(lo)), len(str(top)) + 1):
        a = max(lo, 10 ** (digits - 1) if digits > 1 else 0)
        b = min(top, 10**digits - 1)
        if a <= b:
            out += _same_length(str(a), str(b))
    return out


def _same_length(a: str, b: str) -> list[str]:
    """Sequences matching the digit strings from a to b, both of one length."""
    n = len(a)
    if n == 1:
        return [f'"{a}"' if a == b else f"[{a}-{b}]"]
    if a == b:
        return [f'"{a}"']
    if a[1:] == "0" * (n - 1) and b[1:] == "9" * (n - 1):
        return [_digit_class(a[0], b[0]) + " [0-9]" * (n - 1)]
    if a[0] == b[0]:
        return [f'"{a[0]}" {p}' for p in _same_length(a[1:], b[1:])]
    out = [f'"{a[0]}" {p}' for p in _same_length(a[1:], "9" * (n - 1))]
    if int(b[0]) - int(a[0]) > 1:
        out.append(_digit_class(str(int(a[0]) + 1), str(int(b[0]) - 1)) + " [0-9]" * (n - 1))
    out += [f'"{b[0]}" {p}' for p in _same_length("0" * (n - 1), b[1:])]
    return out


def _digit_class(a: str, b: str) -> str:
    return f'"{a}"' if a == b else f"[{a}-{b}]"
