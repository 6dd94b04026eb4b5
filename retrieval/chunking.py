"""Sections → chunks for embedding: consecutive paragraphs of a section packed together up to
`max_tokens` embedding-model tokens (a chunk never spans two sections, so never two
headings); a paragraph longer than that is cut into windows of words that overlap by
`overlap_tokens`. Every chunk keeps its page, heading, character span in the
document and its position (beginning / middle / end), and its context: the document's title,
the heading path and the page, which is embedded and indexed with the text (a passage
rarely names the manual and chapter it sits in) but never shown as part of it."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePath

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
    context: str = ""  # "title > heading > heading (page n)": indexed, never shown

    @property
    def indexed_text(self) -> str:
        """What is embedded and full-text indexed: the context, then the text."""
        return f"{self.context}\n{self.text}" if self.context else self.text


def section_context(section: Section, filename: str) -> str:
    """The context of a section's chunks: title (or the file's name), headings, page."""
    title = section.title or PurePath(filename).stem.replace("_", " ").strip()
    parts = [p for p in (title, *section.heading_path) if p]
    # A heading that repeats the title (Markdown's "# Title") says nothing more.
    parts = [p for i, p in enumerate(parts) if i == 0 or p != parts[i - 1]]
    context = " > ".join(parts)
    if section.page is not None:
        context += f" (page {section.page})"
    return context.strip()


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


def _section_pieces(
    section: Section, count_tokens: Callable[[str], int], max_tokens: int, overlap_tokens: int
) -> list[tuple[str, int, int]]:
    """(text, start, end) of a section's chunks: its paragraphs packed up to max_tokens,
    short ones (a heading, a list label) joined to the next, long ones cut into windows."""
    base = section.char_start
    out: list[tuple[str, int, int]] = []
    pending: int | None = None  # start of short paragraphs waiting to join the next
    packed: tuple[int, int, int] | None = None  # (start, end, tokens) being filled

    def close(packed: tuple[int, int, int] | None) -> None:
        if packed is not None:
            start, end, _ = packed
            out.append((section.text[start - base : end - base], start, end))

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
        if n > max_tokens:
            close(packed)
            packed = None
            out.extend(_windows(text, start, count_tokens, max_tokens, overlap_tokens))
        elif packed is not None and packed[2] + n <= max_tokens:
            packed = (packed[0], end, packed[2] + n)  # the next paragraph fits: join it
        else:
            close(packed)
            packed = (start, end, n)
    if pending is not None:  # the section ended on short paragraphs
        if packed is not None:
            packed = (packed[0], base + len(section.text.rstrip()), packed[2])
        else:
            text = section.text[pending - base :].strip()
            out.append((text, pending, pending + len(text)))
    close(packed)
    return out


def chunk_sections(
    sections: list[Section],
    count_tokens: Callable[[str], int],
    max_tokens: int = 256,
    overlap_tokens: int = 32,
    filename: str = "",
) -> list[Chunk]:
    pieces: list[tuple[str, int, int, Section]] = []
    for section in sections:
        pieces += [
            (text, start, end, section)
            for text, start, end in _section_pieces(
                section, count_tokens, max_tokens, overlap_tokens
            )
        ]
    total = len(pieces)
    return [
        Chunk(
            i,
            text,
            start,
            end,
            sec.page,
            sec.heading,
            _position(i, total),
            section_context(sec, filename),
        )
        for i, (text, start, end, sec) in enumerate(pieces)
    ]


def _position(index: int, total: int) -> str:
    if total <= 1 or index < max(1, total // 10):
        return "beginning"
    if index >= total - max(1, total // 10):
        return "end"
    return "middle"
