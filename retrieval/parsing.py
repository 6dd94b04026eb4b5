"""Documents → text sections that remember where they came from (title, heading path, page,
offset).

PDF through pypdf (a section per page, split where an outline entry's heading starts; cleaned:
see clean_pdf_pages), Markdown split on its headings, plain text as one section. A file that
cannot give text (encrypted, malformed, scanned images only, binary) raises ParseError with a
reason a person can act on.
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


# An outline (PDF bookmarks) bigger or deeper than this is not a table of contents.
MAX_OUTLINE_ENTRIES = 20_000
MAX_OUTLINE_DEPTH = 32
# A section of at most two short lines that end no sentence is a heading alone; it joins
# the section after it on its page.
_BARE_HEADING_CHARS = 120


def _is_bare_heading(text: str) -> bool:
    return (
        len(text) < _BARE_HEADING_CHARS
        and text.count("\n") <= 1
        and not text.rstrip().endswith((".", "!", "?", ":"))
    )


# Longest title or heading kept as context, in characters.
MAX_HEADING_CHARS = 200


@dataclass(frozen=True)
class Section:
    text: str
    char_start: int  # offset of text in the document's whole extracted text
    page: int | None = None  # 1-based, PDFs only
    heading: str | None = None  # the heading this section sits under (its last level)
    heading_path: tuple[str, ...] = ()  # outermost heading first, `heading` last
    title: str | None = None  # the document's title (PDF metadata, Markdown's first "# ")


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


def _short(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()[:MAX_HEADING_CHARS]


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

    _narrow_pypdf_word_gaps()
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ParseError("the PDF is encrypted with a password")
        pages = clean_pdf_pages([page.extract_text() or "" for page in reader.pages])
        title = _pdf_title(reader)
        headings = _pdf_outline(reader) or _numbered_headings(pages)
        sections: list[Section] = []
        path_now: list[str] = []  # the heading path where the previous page ended
        offset = 0
        for number, text in enumerate(pages, start=1):
            page_headings = headings.get(number - 1, [])
            if not text:
                for depth, heading in page_headings:
                    path_now = [*path_now[:depth], heading]
                continue
            cuts = _split_at_headings(text, page_headings, path_now)
            ends = [c[0] for c in cuts[1:]] + [len(text)]
            carried: int | None = None  # start of a bare heading joining the next section
            for i, ((start, path), end) in enumerate(zip(cuts, ends, strict=True)):
                start = start if carried is None else carried
                body = text[start:end]
                stripped = body.strip()
                if not stripped:
                    continue
                if i + 1 < len(cuts) and _is_bare_heading(stripped):
                    carried = start  # a heading with nothing under it before the next one
                    continue
                carried = None
                sections.append(
                    Section(
                        stripped,
                        offset + start + body.index(stripped[0]),
                        page=number,
                        heading=path[-1] if path else None,
                        heading_path=tuple(path),
                        title=title,
                    )
                )
            path_now = cuts[-1][1]
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


def _split_at_headings(
    text: str, headings: list[tuple[int, str]], path: list[str]
) -> list[tuple[int, list[str]]]:
    """Where the sections of one page start, each with its heading path: the page starts
    under the path the previous page ended with; each outline entry of this page found as
    a line of its text starts a section there (one not found applies from the top)."""
    cuts: list[tuple[int, list[str]]] = []
    top = list(path)
    pos = 0
    for depth, heading in headings:
        at = _heading_line(text, heading, pos)
        if at is None:
            if not cuts:
                top = [*top[:depth], heading]
            else:
                path = [*cuts[-1][1][:depth], heading]
                cuts[-1] = (cuts[-1][0], path)
            continue
        base = cuts[-1][1] if cuts else top
        cuts.append((at, [*base[:depth], heading]))
        pos = at + 1
    if not cuts or cuts[0][0] > 0:
        cuts.insert(0, (0, top))
    return cuts


def _heading_line(text: str, heading: str, pos: int) -> int | None:
    """The offset of the first line at or after pos that is this heading (optionally
    numbered, "5.11.3 Using the DELAYED/ queue")."""
    key = re.sub(r"\s+", " ", heading).strip().lower()
    if not key:
        return None
    at = pos
    for line in text[pos:].split("\n"):
        norm = re.sub(r"\s+", " ", line).strip().lower()
        if norm and len(norm) <= len(key) + 16 and norm.endswith(key):
            return at
        at += len(line) + 1
    return None


def _pdf_title(reader: object) -> str | None:
    try:
        meta = reader.metadata  # type: ignore[attr-defined]
        title = meta.title if meta is not None else None
    except Exception:  # a damaged info dictionary is no reason to refuse the text
        return None
    if not isinstance(title, str):
        return None
    title = _short(title)
    # Generators often leave placeholders; a title that says nothing is no context.
    return title if title and title.lower() not in {"untitled", "title", "document"} else None


def _pdf_outline(reader: object) -> dict[int, list[tuple[int, str]]]:
    """0-based page → [(depth, heading)] of the outline (bookmarks) entries that start on
    it, in document order. An outline that is damaged, huge or too deep is ignored."""
    found: list[tuple[int, int, str]] = []

    def walk(items: object, depth: int) -> None:
        if depth > MAX_OUTLINE_DEPTH or not isinstance(items, list):
            return
        for item in items:
            if len(found) >= MAX_OUTLINE_ENTRIES:
                return
            if isinstance(item, list):
                walk(item, depth + 1)
                continue
            try:
                page = reader.get_destination_page_number(item)  # type: ignore[attr-defined]
                heading = _short(str(item.title))
            except Exception:
                continue
            if isinstance(page, int) and page >= 0 and heading:
                found.append((page, depth, heading))

    try:
        walk(reader.outline, 0)  # type: ignore[attr-defined]
    except Exception:
        return {}
    out: dict[int, list[tuple[int, str]]] = {}
    for page, depth, heading in found:
        out.setdefault(page, []).append((depth, heading))
    return out


# "3.17. /srv : Data for services" or "4.2.1 Purpose": a numbered heading of a PDF without
# an outline. At least two numbers (x.y), so a numbered list ("1. Unpack it") is not one.
_NUMBERED_HEADING = re.compile(r"^(\d{1,3}(?:\.\d{1,3})+)\.?\s+(\S.{1,100})$")


def _numbered_headings(pages: list[str]) -> dict[int, list[tuple[int, str]]]:
    """Headings of a PDF without an outline, from its numbered heading lines (not ones
    ending in a full stop or going on in lower case, which are sentences that happen to
    start with a number)."""
    out: dict[int, list[tuple[int, str]]] = {}
    for index, text in enumerate(pages):
        for line in text.split("\n"):
            m = _NUMBERED_HEADING.match(line.strip())
            title = m.group(2) if m else ""
            if (
                m
                and not title.rstrip().endswith((".", ",", ";"))
                and not title[0].islower()  # "1.2 million users" is a sentence
                and len(line.split()) <= 16
            ):
                depth = m.group(1).count(".")
                out.setdefault(index, []).append((depth - 1, _short(line)))
    return out


_PYPDF_PATCHED = False
# Half a space, in thousandths of an em: the narrowest word gap pypdf may require.
_HALF_SPACE = 125.0


def _narrow_pypdf_word_gaps() -> None:
    """pypdf finds word gaps by comparing how far the text moved with half the font's
    space width; for fonts without a space glyph (the subset Type0 fonts LaTeX and
    Sphinx write) it guesses a width twice too wide and glues words together
    ("Themailspoolis /var/mail"), which ruins full-text search and embeddings. Cap the
    half-space at an eighth of an em, narrower than any word space and wider than kerning:
    measured on Debian's policy manual, 3,112 glued runs of 25+ letters became 2; PDFs
    that were right stay byte-identical."""
    global _PYPDF_PATCHED
    if _PYPDF_PATCHED:
        return
    try:
        from pypdf._text_extraction._text_extractor import TextExtraction
    except ImportError:  # another pypdf layout: leave it as it is
        _PYPDF_PATCHED = True
        return
    original = getattr(TextExtraction, "_handle_tf", None)
    if original is None:
        _PYPDF_PATCHED = True
        return

    def handle_tf(self: object, operands: list[object]) -> None:
        original(self, operands)
        width = getattr(self, "_space_width", None)
        if isinstance(width, float | int) and width > _HALF_SPACE:
            self._space_width = _HALF_SPACE  # type: ignore[attr-defined]

    TextExtraction._handle_tf = handle_tf  # type: ignore[method-assign]
    _PYPDF_PATCHED = True


def _parse_markdown(text: str) -> list[Section]:
    """One section per heading (the heading line included, so its words are searchable),
    with the path of headings above it. Line by line, linear in the text's length whatever
    it holds (a regex over heading lines was quadratic on long runs of spaces and froze the
    server)."""
    starts: list[int] = []
    headings: dict[int, tuple[int, str]] = {}
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
    title = next((_short(h) for level, h in headings.values() if level == 1), None)
    sections = []
    levels: list[tuple[int, str]] = []  # the open headings, outermost first
    carried: int | None = None  # start of a heading alone, joining the next section
    bounds = list(zip(starts, [*starts[1:], len(text)], strict=True))
    for i, (begin, end) in enumerate(bounds):
        if begin in headings:
            level, heading = headings[begin]
            levels = [*[h for h in levels if h[0] < level], (level, _short(heading))]
        start = begin if carried is None else carried
        body = text[start:end]
        stripped = body.strip()
        if not stripped:
            continue
        if i + 1 < len(bounds) and "\n" not in stripped and begin in headings:
            carried = start  # "# Guide" straight above "## One": one section
            continue
        carried = None
        sections.append(
            Section(
                stripped,
                start + body.index(stripped[0]),
                heading=headings[begin][1] if begin in headings else None,
                heading_path=tuple(h for _, h in levels),
                title=title,
            )
        )
    return sections


def _heading(line: str) -> tuple[int, str] | None:
    """The level and text of an ATX heading ("#" to "######", a space or tab, the text,
    optionally closing #s), else None."""
    line = line.rstrip("\r")
    level = len(line) - len(line.lstrip("#"))
    if not 1 <= level <= 6 or len(line) == level or line[level] not in " \t":
        return None
    text = line[level:].strip(" \t")
    unclosed = text.rstrip("#")
    if unclosed != text and (not unclosed or unclosed[-1] in " \t"):
        text = unclosed.rstrip(" \t")
    return (level, text) if text else None


# Lines this near the top or bottom of a page are candidates for running headers/footers.
_EDGE_LINES = 2
_MAX_BOILERPLATE_CHARS = 100
_PAGE_NUMBER_WORDS = 3
_HYPHEN_BREAK = re.compile(r"(?<=[^\W\d_])-\n(?=[a-z])")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A table-of-contents line: a title, dot leaders, a page number ("5.6 Uploading . . . 33").
_TOC_LINE = re.compile(r"^.*\S.*?(?:\.\s?){4,}\s*[\divxlc]+\s*$", re.IGNORECASE)


def clean_pdf_pages(pages: list[str]) -> list[str]:
    """Text of real PDFs, made fit for search and for a prompt:
    - ligatures and other compatibility characters folded (NFKC: "\ufb01le" → "file");
    - words hyphenated across a line break joined ("infor-\nmation" → "information");
    - table-of-contents lines dropped (dot leaders and a page number): they name every
      section of a manual, so they match every question and answer none;
    - running headers and footers dropped: a line near the top or bottom of a page that
      recurs on at least half of the odd or of the even pages, and on three or more (page
      numbers ignored, so "Page 3 of 9" matches "Page 4 of 9"), or that carries the
      page's printed number where the document's pages are numbered (a chapter's or
      section's name beside it changes); they would otherwise repeat in every chunk;
    - paragraphs marked with a blank line where the page gives none (pypdf never does): a
      line that ends a sentence well short of the page's line width, or one before a
      bullet or a numbered heading, ends a paragraph. Chunks follow paragraphs, so a chunk
      no longer runs from the middle of one section into the next."""
    texts = [_CONTROL.sub("", unicodedata.normalize("NFKC", t)) for t in pages]
    texts = [_HYPHEN_BREAK.sub("", t) for t in texts]
    lines = [
        [line.rstrip() for line in t.strip().splitlines() if not _TOC_LINE.match(line)]
        for t in texts
    ]
    # Counted over odd and even pages apart: a book printed two-sided alternates its
    # running headers ("172 gnuplot 5.4" on the left, "gnuplot 5.4 173" on the right),
    # so each is on just under half of all pages.
    repeated: set[str] = set()
    for parity in (0, 1):
        side = lines[parity::2]
        counts: Counter[str] = Counter()
        for page in side:
            counts.update({_boilerplate_key(line) for line in _edges(page)} - {""})
        threshold = max(3, (len([p for p in side if p]) + 1) // 2)
        repeated |= {key for key, n in counts.items() if n >= threshold}
    offset = _page_number_offset(lines)
    out = []
    for n, page in enumerate(lines):
        edge = _edge_indexes(len(page))
        page = [
            line
            for i, line in enumerate(page)
            if i not in edge
            or (
                _boilerplate_key(line) not in repeated
                and (offset is None or _page_number(line) != n + offset)
            )
        ]
        out.append("\n".join(_mark_paragraphs(page)).strip())
    return out


# A page number at either end of a short line: "148 Chapter 22. Upgrading checklist",
# "22.6. Version 4.5.0 149", "- 12 -". A section number ("22.3 Version 4.6.1") is not one.
_PAGE_NUMBER_AT_END = re.compile(r"^\W*(\d{1,4})(?:\s+\S.*)?$|^.*\S\s+(\d{1,4})\W*$")


def _page_number(line: str) -> int | None:
    if len(line) > _MAX_BOILERPLATE_CHARS:
        return None
    m = _PAGE_NUMBER_AT_END.match(line.strip())
    if m is None:
        return None
    return int(m.group(1) or m.group(2))


def _page_number_offset(lines: list[list[str]]) -> int | None:
    """How the document's printed page numbers relate to the page index (printed = index
    + offset), if the lines at page edges agree on it for a quarter of the pages and three
    or more. Then a header or footer that carries the page number goes wherever its text
    changes (a chapter's name on the left pages, a section's on the right), which the
    recurring-line rule cannot see."""
    offsets: Counter[int] = Counter()
    for n, page in enumerate(lines):
        found = {_page_number(line) for line in _edges(page)} - {None}
        offsets.update({number - n for number in found if number is not None})
    if not offsets:
        return None
    offset, count = offsets.most_common(1)[0]
    return offset if count >= max(3, len([p for p in lines if p]) // 4) else None


_BULLET = re.compile(r"^\s*(?:[\u2022\u25e6\u25aa\u2023\u2013\u2014*-]\s|\d{1,2}[.)]\s)")
_SENTENCE_END = (".", ":", "!", "?", ".)", ".\u201d", '."')
# A line shorter than this share of the page's usual width, ending a sentence, ends a
# paragraph.
_SHORT_LINE = 0.85


def _mark_paragraphs(page: list[str]) -> list[str]:
    if any(not line.strip() for line in page) or len(page) < 5:
        return page  # the page marks its paragraphs, or is too short to tell
    widths = sorted(len(line) for line in page if len(line.strip()) >= 20)
    if len(widths) < 3:
        return page
    width = widths[int(len(widths) * 0.8)]
    out: list[str] = []
    for i, line in enumerate(page):
        if out and (_BULLET.match(line) or _NUMBERED_HEADING.match(line.strip())):
            out.append("")
        out.append(line)
        after = page[i + 1] if i + 1 < len(page) else ""
        stripped = line.rstrip()
        if (
            after
            and stripped.endswith(_SENTENCE_END)
            and len(stripped) < _SHORT_LINE * width
            and not _BULLET.match(after)
        ):
            out.append("")
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
