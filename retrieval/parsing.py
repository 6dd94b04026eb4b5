"""Documents → text sections that remember where they came from (page, heading, offset).

PDF through pypdf (one section per page, cleaned: see clean_pdf_pages), Markdown split
on its headings, plain text as one section. A file that cannot give text (encrypted,
malformed, scanned images only, binary) raises ParseError with a reason a person can act
on.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdown", ".mkd"}
TEXT_SUFFIXES = {
    ".txt",
    ".text",
    ".rst",
    ".csv",
    ".log",
    ".json",
    ".yaml",
    ".yml",
    ".toml",
    ".py",
    ".js",
    ".ts",
    ".html",
    ".htm",
    ".xml",
    ".ini",
    ".cfg",
    ".tex",
}


class ParseError(ValueError):
    pass


@dataclass(frozen=True)
class Section:
    text: str
    char_start: int  # offset of text in the document's whole extracted text
    page: int | None = None  # 1-based, PDFs only
    heading: str | None = None  # Markdown: the heading this section sits under


def parse(path: Path, filename: str) -> list[Section]:
    suffix = Path(filename).suffix.lower()
    if suffix == ".pdf" or _starts_with(path, b"%PDF-"):
        sections = _parse_pdf(path)
    else:
        text = _read_text(path, filename)
        sections = _parse_markdown(text) if suffix in MARKDOWN_SUFFIXES else [Section(text, 0)]
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        raise ParseError(f"{filename} contains no text")
    return sections


def _starts_with(path: Path, magic: bytes) -> bool:
    with path.open("rb") as f:
        return f.read(len(magic)) == magic


def _read_text(path: Path, filename: str) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192] and data[:2] not in (b"\xff\xfe", b"\xfe\xff"):
        raise ParseError(
            f"{filename} looks like a binary file; supported: PDF, Markdown and plain text"
        )
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # never fails; better than refusing a legacy text file


def _parse_pdf(path: Path) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ParseError("the PDF is encrypted with a password")
        pages = clean_pdf_pages([page.extract_text() or "" for page in reader.pages])
        sections = []
        offset = 0
        for number, text in enumerate(pages, start=1):
            if text:
                sections.append(Section(text, offset, page=number))
                offset += len(text) + 2
    except ParseError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as e:
        raise ParseError(f"the PDF could not be read: {e}") from e
    except Exception as e:  # pypdf raises assorted errors on damaged files
        raise ParseError(f"the PDF could not be read: {type(e).__name__}: {e}") from e
    if not sections:
        raise ParseError("the PDF has no extractable text (scanned images need OCR)")
    return sections


def _parse_markdown(text: str) -> list[Section]:
    """One section per heading (the heading line included, so its words are searchable).
    Line by line, linear in the text's length whatever it holds (a regex over heading
    lines was quadratic on long runs of spaces and froze the server)."""
    starts: list[int] = []
    headings: dict[int, str] = {}
    fence = ""  # the fence of the code block we are in: headings there are code
    pos = 0
    for line in text.split("\n"):
        marker = line.lstrip(" ")[:3]
        if marker in ("```", "~~~") and (not fence or marker == fence):
            fence = "" if fence else marker
        elif not fence and (heading := _heading(line)) is not None:
            starts.append(pos)
            headings[pos] = heading
        pos += len(line) + 1
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    sections = []
    for begin, end in zip(starts, [*starts[1:], len(text)], strict=True):
        body = text[begin:end]
        stripped = body.strip()
        if stripped:
            sections.append(
                Section(stripped, begin + body.index(stripped[0]), heading=headings.get(begin))
            )
    return sections


def _heading(line: str) -> str | None:
    """The text of an ATX heading ("#" to "######", a space or tab, the text, optionally
    closing #s), else None."""
    line = line.rstrip("\r")
    level = len(line) - len(line.lstrip("#"))
    if not 1 <= level <= 6 or len(line) == level or line[level] not in " \t":
        return None
    text = line[level:].strip(" \t")
    unclosed = text.rstrip("#")
    if unclosed != text and (not unclosed or unclosed[-1] in " \t"):
        text = unclosed.rstrip(" \t")
    return text or None


# Lines this near the top or bottom of a page are candidates for running headers/footers.
_EDGE_LINES = 2
_MAX_BOILERPLATE_CHARS = 100
_PAGE_NUMBER_WORDS = 3
_HYPHEN_BREAK = re.compile(r"(?<=[^\W\d_])-\n(?=[a-z])")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_pdf_pages(pages: list[str]) -> list[str]:
    """Text of real PDFs, made fit for search and for a prompt:
    - ligatures and other compatibility characters folded (NFKC: "\ufb01le" → "file");
    - words hyphenated across a line break joined ("infor-\nmation" → "information");
    - running headers and footers dropped: a line near the top or bottom of a page that
      recurs on at least half of the pages, and on three or more (page numbers ignored, so
      "Page 3 of 9" matches "Page 4 of 9"); they would otherwise repeat in every chunk."""
    texts = [_CONTROL.sub("", unicodedata.normalize("NFKC", t)) for t in pages]
    texts = [_HYPHEN_BREAK.sub("", t) for t in texts]
    lines = [[line.rstrip() for line in t.strip().splitlines()] for t in texts]
    counts: Counter[str] = Counter()
    for page in lines:
        counts.update({_boilerplate_key(line) for line in _edges(page)} - {""})
    threshold = max(3, (len([p for p in lines if p]) + 1) // 2)
    repeated = {key for key, n in counts.items() if n >= threshold}
    out = []
    for page in lines:
        if repeated:
            edge = _edge_indexes(len(page))
            page = [
                line
                for i, line in enumerate(page)
                if i not in edge or _boilerplate_key(line) not in repeated
            ]
        out.append("\n".join(page).strip())
    return out


def _edge_indexes(n: int) -> set[int]:
    """The first and last lines of an n-line page (one each on a short page)."""
    k = _EDGE_LINES if n >= 3 * _EDGE_LINES else 1
    return set(range(min(k, n))) | set(range(max(n - k, 0), n))


def _edges(page: list[str]) -> list[str]:
    return [page[i] for i in sorted(_edge_indexes(len(page)))]


def _boilerplate_key(line: str) -> str:
    """How a line is compared across pages. Long lines are text, never a running header.
    Digits are ignored only in page-number lines ("Page 3 of 9", "- 3 -", "p. 3"), whose
    words are few: lines that differ only in a number, like "Error E1042: valve stuck",
    are content."""
    if len(line) > _MAX_BOILERPLATE_CHARS:
        return ""
    key = re.sub(r"\s+", " ", line).strip().lower()
    if len(re.findall(r"[^\W\d_]+", key)) <= _PAGE_NUMBER_WORDS:
        key = re.sub(r"\d+", "#", key)
    return key
