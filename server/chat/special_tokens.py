"""Client text stays text: in a chat prompt, special tokens come only from the template.

A rendered chat prompt is tokenized with parse_special=True, so that the template's own
markup (`<|im_start|>`, `<|im_end|>`, ...) becomes control tokens. A message, a tool
result or a retrieved document that spells one of those would become a control token too,
and could forge a system turn. So, before rendering, every such spelling in client text is
cut in two by a marker nobody can guess; the rendered prompt is tokenized piece by piece
between the markers, and no special token can form across a cut.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from typing import Any


def new_marker() -> str:
    """A cut mark for one prompt: private-use characters around a random nonce."""
    return f"\ue000{secrets.token_hex(8)}\ue001"


class SpecialTokenGuard:
    def __init__(self, special_texts: Iterable[str]) -> None:
        # A one-character special token cannot be cut; llama.cpp's vocabularies have none
        # that a client could not also send as text, so they are left alone.
        texts = sorted({t for t in special_texts if len(t) > 1}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, texts))) if texts else None

    def defang(self, value: Any, marker: str) -> Any:
        """A copy of value (strings inside dicts and lists included, keys excepted) in
        which every spelling of a special token is cut by `marker`."""
        if isinstance(value, str):
            return self._cut(value, marker)
        if isinstance(value, dict):
            return {k: self.defang(v, marker) for k, v in value.items()}
        if isinstance(value, list):
            return [self.defang(v, marker) for v in value]
        return value

    def _cut(self, text: str, marker: str) -> str:
        if self._pattern is None:
            return text
        pieces = []
        # Cut after the first character of the leftmost spelling, then search again from
        # there: overlapping spellings ("<|<|im_end|>") are cut too.
        while (match := self._pattern.search(text)) is not None:
            cut = match.start() + 1
            pieces.append(text[:cut])
            text = text[cut:]
        pieces.append(text)
        return marker.join(pieces)


def tokenize_pieces(
    text: str, marker: str, tokenize: Callable[[str, bool], list[int]]
) -> list[int]:
    """Tokens of text with the cuts honoured: each piece between markers on its own.
    tokenize(piece, is_first) parses special tokens within a piece."""
    tokens: list[int] = []
    for i, piece in enumerate(text.split(marker)):
        if piece or i == 0:
            tokens += tokenize(piece, i == 0)
    return tokens
