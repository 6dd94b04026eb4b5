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
# A character inside a JSON string: llama.cpp's C++ converter's rule. The Python converter's
# `[^"\\]` also admits raw control characters, which JSON forbids there (a sampled tab or
# newline inside a string made json.loads fail).
CHAR_RULE = (
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F])"
)
# The converter's own limit: integers of at most 16 digits.
MAX_DIGITS = 16
# The converter unrolls a repetition {m,n} into m copies and n - m nested optional groups,
# in Python, before llama.cpp parses them (one C stack frame pair per group): bounds above
# this are refused, and so is a pattern whose nested repetitions multiply past the next.
MAX_REPETITION = 1000
MAX_PATTERN_SIZE = 10_000
_REPETITION_KEYWORDS = (
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
)
# Keywords whose value is a schema, a list of schemas, or a map of names to schemas.
_SUBSCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "contains")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")


class SchemaError(ValueError):
    """The schema cannot be turned into a grammar."""


def json_schema_to_gbnf(schema: dict[str, Any]) -> str:
    check_limits(schema)
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


def check_limits(schema: dict[str, Any]) -> None:
    """SchemaError when a schema would unroll into a grammar too big or too deep to build:
    repetition bounds over MAX_REPETITION, patterns that expand past MAX_PATTERN_SIZE."""
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        for keyword in _REPETITION_KEYWORDS:
            if keyword in node:
                value = node[keyword]
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise SchemaError(f"{keyword} must be a non-negative integer")
                if value > MAX_REPETITION:
                    raise SchemaError(f"{keyword} is {value}; the limit is {MAX_REPETITION}")
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            check_pattern(pattern)
        stack.extend(node[k] for k in _SUBSCHEMA if isinstance(node.get(k), dict))
        for k in _SUBSCHEMA_LISTS:
            if isinstance(node.get(k), list):
                stack.extend(node[k])
        for k in _SUBSCHEMA_MAPS:
            if isinstance(node.get(k), dict):
                stack.extend(node[k].values())


def check_pattern(pattern: str) -> None:
    """Estimate the grammar a regex unrolls into (sequences add, {m,n} multiplies what it
    repeats) and refuse it when too big or when a bound is over MAX_REPETITION."""
    frames = [[0, 0]]  # per open group: [size so far, size of the last item]
    i, n = 0, len(pattern)

    def item(size: int) -> None:
        frames[-1][0] += size
        frames[-1][1] = size

    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 1
            item(1)
        elif c == "[":
            i += 1
            while i < n and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            item(1)
        elif c == "(":
            frames.append([0, 0])
        elif c == ")" and len(frames) > 1:
            item(max(1, frames.pop()[0]))
        elif c == "{":
            end = pattern.find("}", i)
            bounds = pattern[i + 1 : end if end >= 0 else n].split(",")
            numbers = [int(b) for b in bounds if b.strip().isdigit()]
            if any(b > MAX_REPETITION for b in numbers):
                raise SchemaError(
                    f"the pattern repeats an item {max(numbers)} times; the limit is "
                    f"{MAX_REPETITION}"
                )
            times = max(numbers, default=1)
            frame = frames[-1]
            frame[0] += frame[1] * (times - 1)
            frame[1] *= times
            i = n if end < 0 else end
        elif c not in "*+?|^$":
            item(1)
        if sum(f[0] for f in frames) > MAX_PATTERN_SIZE:
            raise SchemaError(
                f"the pattern expands into more than {MAX_PATTERN_SIZE} grammar elements"
            )
        i += 1


class _Converter(SchemaConverter):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # llama.cpp's own converter (C++) lets JSON be pretty-printed; the Python one allows
        # a single space only, which pushes models that write indented JSON off course.
        self._rules["space"] = SPACE_RULE

    def _add_primitive(self, name: str, rule: Any) -> str:
        if name == "char":
            return self._add_rule(name, CHAR_RULE)
        return super()._add_primitive(name, rule)

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
    # The grammar writes at most MAX_DIGITS digits: a bound beyond that on the open side
    # constrains nothing, one on the closed side admits no integer it can write.
    limit = 10**MAX_DIGITS
    if lo is not None and lo <= -limit:
        lo = None
    if hi is not None and hi >= limit:
        hi = None
    if (lo is not None and lo >= limit) or (hi is not None and hi <= -limit):
        raise SchemaError(f"integer bounds beyond {MAX_DIGITS} digits: {json.dumps(schema)}")
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
