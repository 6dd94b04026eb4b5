"""OpenAI's attribute filters for vector store search, evaluated against a chunk's attributes.

Comparison: {"type": "eq"|"ne"|"gt"|"gte"|"lt"|"lte"|"in"|"nin", "key": ..., "value": ...};
compound: {"type": "and"|"or", "filters": [...]}.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "in": lambda a, b: a in b,
    "nin": lambda a, b: a not in b,
}


class FilterError(ValueError):
    pass


def validate(spec: Any) -> None:
    if not isinstance(spec, dict) or "type" not in spec:
        raise FilterError("a filter is an object with a 'type'")
    kind = spec["type"]
    if kind in ("and", "or"):
        subs = spec.get("filters")
        if not isinstance(subs, list) or not subs:
            raise FilterError(f"an '{kind}' filter needs a non-empty 'filters' list")
        for sub in subs:
            validate(sub)
    elif kind in _COMPARE:
        if not isinstance(spec.get("key"), str) or "value" not in spec:
            raise FilterError(f"a '{kind}' filter needs 'key' and 'value'")
        if kind in ("in", "nin") and not isinstance(spec["value"], list):
            raise FilterError(f"an '{kind}' filter needs a list 'value'")
    else:
        raise FilterError(f"unknown filter type {kind!r}")


def matches(spec: dict[str, Any], attributes: dict[str, Any]) -> bool:
    kind = spec["type"]
    if kind == "and":
        return all(matches(s, attributes) for s in spec["filters"])
    if kind == "or":
        return any(matches(s, attributes) for s in spec["filters"])
    if spec["key"] not in attributes:
        return kind in ("ne", "nin")
    try:
        return bool(_COMPARE[kind](attributes[spec["key"]], spec["value"]))
    except TypeError:  # comparing a number with a string, say
        return False
