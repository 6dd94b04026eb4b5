"""Ids of the objects Hearth hands out, in OpenAI's forms: a prefix that says what the
object is ("chatcmpl-", "file-", "vs_", "resp_", "call_", ...) and 24 random hex digits.
Random rather than counted, so ids never repeat across restarts and say nothing about
how many objects exist."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """prefix carries its own separator, as OpenAI's do: new_id("chatcmpl-"), new_id("vs_")."""
    return prefix + secrets.token_hex(12)
