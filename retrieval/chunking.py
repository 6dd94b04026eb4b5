"""Sections → chunks for embedding: about `max_tokens` embedding-model tokens or one
paragraph, whichever is smaller; a paragraph longer than that is cut into windows of words
that overlap by `overlap_tokens`. Every chunk keeps its page, heading, character span in the
document and its position (beginning / middle / end)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from retrieval.parsing import Section

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")
_WORD = re.compile(r"\S+")
# Paragraphs shorter than this many tokens (a heading, a list label) join the next one.
MIN_TOKENS = 8


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    char_start: int
    char_end: int
    page: int | None
    heading: str | None
    position: str  # "beginning" | "middle" | "end" of the document


def _paragraphs(section: Section) -> Iterator[tuple[str, int]]:
    """(paragraph text, offset in the document)"""
    start = 0
    for brk in _PARAGRAPH_BREAK.finditer(section.text):
        yield section.text[start : brk.start()], section.char_start + start
        start = brk.end()
    yield section.text[start:], section.char_start + start


def _windows(
    text: str, offset: int, count: Callable[[str], int], max_tokens: int, overlap: int
) -> Iterator[tuple[str, int, int]]:
    """Cut a long paragraph into overlapping windows of whole words."""
    words = [(m.start(), m.end(), count(m.group())) for m in _WORD.finditer(text)]
    i = 0
    while i < len(words):
        total, j = 0, i
        while j < len(words) and (total + words[j][2] <= max_tokens or j == i):
            total += words[j][2]
            j += 1
        yield text[words[i][0] : words[j - 1][1]], offset + words[i][0], offset + words[j - 1][1]
        if j >= len(words):
            break
        back, k = 0, j
        while k > i + 1 and back + words[k - 1][2] <= overlap:
            k -= 1
            back += words[k][2]
        i = k


def chunk_sections(
    sections: list[Section],
    count_tokens: Callable[[str], int],
    max_tokens: int = 256,
    overlap_tokens: int = 32,
) -> list[Chunk]:
    pieces: list[tuple[str, int, int, Section]] = []
    for section in sections:
        base = section.char_start
        pending: int | None = None  # start of short paragraphs waiting to join the next
        for para, offset in _paragraphs(section):
            stripped = para.strip()
            if not stripped:
                continue
            start = offset + para.index(stripped[0]) if pending is None else pending
            end = offset + para.index(stripped[0]) + len(stripped)
            text = section.text[start - base : end - base]
            n = count_tokens(text)
            if n < MIN_TOKENS:
                pending = start
                continue
            pending = None
            if n <= max_tokens:
                pieces.append((text, start, end, section))
            else:
                pieces.extend(
                    (t, s, e, section)
                    for t, s, e in _windows(text, start, count_tokens, max_tokens, overlap_tokens)
                )
        if pending is not None:  # the section ended on short paragraphs
            text = section.text[pending - base :].strip()
            pieces.append((text, pending, pending + len(text), section))
    total = len(pieces)
    return [
        Chunk(i, text, start, end, sec.page, sec.heading, _position(i, total))
        for i, (text, start, end, sec) in enumerate(pieces)
    ]


def _position(index: int, total: int) -> str:
    if total <= 1 or index < max(1, total // 10):
        return "beginning"
    if index >= total - max(1, total // 10):
        return "end"
    return "middle"
