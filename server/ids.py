"""Ids of the objects Hearth hands out, in OpenAI's forms: a prefix that says what the
object is ("chatcmpl-", "file-", "vs_", "resp_", "call_", ...) and 24 random hex digits.
Random rather than counted, so ids never repeat across restarts and say nothing about
how many objects exist.

A replica of `hearth serve --ray` puts its name between the two ("resp_<replica>_<hex>"):
objects it keeps in its own memory (stored responses) are then found by asking it."""

from __future__ import annotations

import secrets

_replica = ""


def name_replica(replica: str) -> None:
    """From now on this process's ids carry `replica` (alphanumeric: Ray Serve's ids)."""
    global _replica
    _replica = f"{replica}_" if replica else ""


def new_id(prefix: str) -> str:
    """prefix carries its own separator, as OpenAI's do: new_id("chatcmpl-"), new_id("vs_")."""
    return prefix + _replica + secrets.token_hex(12)


def replica_name() -> str:
    """This process's replica name ("" outside a cluster)."""
    return _replica.removesuffix("_")


def owns(object_id: str, prefix: str) -> bool:
    """Whether this process made `object_id` (with new_id(prefix)), as far as ids say:
    always, outside a cluster."""
    return replica_of(object_id, prefix) == _replica.removesuffix("_")


def replica_of(object_id: str, prefix: str) -> str:
    """The replica named in an id new_id(prefix) made ("" for none)."""
    rest = object_id.removeprefix(prefix)
    if rest == object_id or "_" not in rest:
        return ""
    name = rest.split("_", 1)[0]
    return name if name.isalnum() else ""
