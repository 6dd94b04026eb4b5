"""Parsing and chunking of real files: PDFs written here with fpdf2, Markdown, plain text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fpdf import FPDF

from retrieval.chunking import chunk_sections
from retrieval.parsing import ParseError, parse
from server.llama.model import LlamaModel
from server.model_files import prepare_default_embedding_model
from server.settings import load_settings


@pytest.fixture(scope="module")
def count_tokens() -> Iterator:
    model = LlamaModel(prepare_default_embedding_model(load_settings().storage.resolved_data_dir()))
    yield lambda text: len(model.tokenize(text, add_special=False))
    model.close()


def write_pdf(path: Path, pages: list[str], password: str | None = None) -> Path:
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    if password:
        pdf.set_encryption(owner_password=password, user_password=password)
    pdf.output(str(path))
    return path


def test_pdf_pages_are_kept(tmp_path: Path) -> None:
    path = write_pdf(
        tmp_path / "manual.pdf",
        [
            "Chapter one. The pump must be primed before use.",
            "Chapter two. Error E1042 means the valve is stuck.",
        ],
    )
    sections = parse(path, "manual.pdf")
    assert [s.page for s in sections] == [1, 2]
    assert "E1042" in sections[1].text
    assert sections[1].char_start > sections[0].char_start


@pytest.mark.parametrize("method", ["RC4", "AES_128", "AES_256"])
def test_pdfs_locked_only_against_editing_are_read(tmp_path: Path, method: str) -> None:
    # Many published PDFs carry an owner password and an empty user password: anyone may
    # read them. AES ones need pypdf's crypto extra (cryptography).
    from fpdf.enums import EncryptionMethod

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    pdf.add_page()
    pdf.multi_cell(0, 6, "The kettle's warranty lasts three years from purchase.")
    pdf.set_encryption(
        owner_password="owner-only",
        user_password="",
        encryption_method=getattr(EncryptionMethod, method),
    )
    pdf.output(str(tmp_path / "restricted.pdf"))
    (section,) = parse(tmp_path / "restricted.pdf", "restricted.pdf")
    assert "warranty lasts three years" in section.text


def test_running_headers_footers_hyphens_and_ligatures_are_cleaned(tmp_path: Path) -> None:
    bodies = [
        "The pump must be primed before use. It draws water from the tank.",
        "Error E1042 means the valve is stuck. The infor-\nmation is in the log.",
        "Replace the filter yearly.\nCheck the seal.\nTighten the bolts.",
        "Store the device in a dry place.",
        "Dispose of batteries at a collection point.",
    ]
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    pdf.set_auto_page_break(auto=True, margin=10)  # room for the footer
    for i, body in enumerate(bodies, 1):
        pdf.add_page()
        pdf.multi_cell(
            0, 6, "ACME Pumps - Service Manual - Confidential", new_x="LMARGIN", new_y="NEXT"
        )
        pdf.multi_cell(0, 6, body, new_x="LMARGIN", new_y="NEXT")
        pdf.set_y(-20)
        pdf.multi_cell(0, 6, f"Page {i} of {len(bodies)}", new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(tmp_path / "manual.pdf"))
    sections = parse(tmp_path / "manual.pdf", "manual.pdf")
    assert [s.page for s in sections] == [1, 2, 3, 4, 5]
    for section in sections:
        assert "Confidential" not in section.text and "of 5" not in section.text
    assert "The information is in the log." in sections[1].text
    assert sections[0].text.startswith("The pump must be primed")


def test_pdf_text_cleaning_keeps_what_is_not_boilerplate() -> None:
    from retrieval.parsing import clean_pdf_pages

    # Ligatures fold; a one- or two-page document loses nothing; real hyphens stay.
    assert clean_pdf_pages(["The \ufb01lter is well-known.\nPage 1 of 1"]) == [
        "The filter is well-known.\nPage 1 of 1"
    ]
    # A line shared by only some pages, or a long one, is text.
    pages = [
        f"Intro {i}\nShared note\nBody {i}" if i < 2 else f"Intro {i}\nBody {i}" for i in range(6)
    ]
    assert all("Shared note" in p for p in clean_pdf_pages(pages)[:2])
    # Lines that differ only in a number are content, not page numbers.
    codes = [f"Intro {i}\nBody text {i}\nError E{1000 + i}: the valve is stuck" for i in range(6)]
    assert all(f"E{1000 + i}" in p for i, p in enumerate(clean_pdf_pages(codes)))
    # A book printed two-sided: its running headers alternate between left and right
    # pages, so each is on half of them at most (one even less: a chapter's first page
    # has none); both go, and a label at the top of a few pages stays.
    book = [
        (f"{n} Pump Manual 2.1" if n % 2 == 0 else f"Pump Manual 2.1 {n}")
        + ("\nSyntax:" if n in (3, 8) else "")
        + f"\nBody text of page {n}, long enough to be prose.\nMore of page {n}.\nEnd {n}."
        for n in range(1, 11)
    ]
    book[4] = book[4].split("\n", 1)[1]  # page 5 opens a chapter: no header
    cleaned = clean_pdf_pages(book)
    assert not any("Pump Manual" in p for p in cleaned)
    assert cleaned[0].startswith("Body text of page 1") and "Syntax:" in cleaned[2]
    # Headers that carry the printed page number (here the index + 10: front matter)
    # beside a chapter's or section's name, which changes: they go by the number; a
    # section number, or a number that is not the page's, stays.
    chapters = ["Setup", "Setup", "Setup", "Use", "Use", "Use", "Care", "Care"]
    topics = ["Unpacking", "Mounting", "Wiring", "Priming", "Running", "Stopping", "Cleaning"]
    numbered = [
        (f"{n + 10} Chapter {n // 3}. {name}" if n % 2 else f"{n // 3}.1. {name} {n + 10}")
        + f"\n2.{n} {(topics * 2)[n]}\nBody of page {n}, which is prose and long enough.\n"
        + f"More of it.\n{n + 20} {(topics * 2)[n + 1].lower()} steps at most."
        for n, name in enumerate(chapters)
    ]
    cleaned = clean_pdf_pages(numbered)
    assert not any("Chapter" in p or "1. Setup" in p or "1. Use" in p for p in cleaned)
    assert all(f"2.{n} " in p and f"{n + 20} " in p for n, p in enumerate(cleaned))
    long_line = "This sentence is long enough to be text and not a header, " * 3
    assert all(
        long_line.strip() in p for p in clean_pdf_pages([long_line + f"\n{i}" for i in range(4)])
    )


def test_encrypted_malformed_and_empty_pdfs_fail_clearly(tmp_path: Path) -> None:
    locked = write_pdf(tmp_path / "locked.pdf", ["secret text"], password="hunter2")
    with pytest.raises(ParseError, match="encrypted"):
        parse(locked, "locked.pdf")
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.7\n this is not really a pdf \x00\x01")
    with pytest.raises(ParseError):
        parse(broken, "broken.pdf")
    blank = write_pdf(tmp_path / "blank.pdf", [""])
    with pytest.raises(ParseError, match=r"no extractable text|no text"):
        parse(blank, "blank.pdf")


def test_markdown_splits_on_headings(tmp_path: Path) -> None:
    path = tmp_path / "guide.md"
    path.write_text("Intro line.\n\n# Install\n\nRun make serve.\n\n## Test\n\nRun make test.\n")
    sections = parse(path, "guide.md")
    assert [s.heading for s in sections] == [None, "Install", "Test"]
    text = path.read_text()
    for s in sections:
        assert text[s.char_start : s.char_start + len(s.text)] == s.text


def test_binary_and_empty_text_fail(tmp_path: Path) -> None:
    binary = tmp_path / "image.bin"
    binary.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(ParseError, match="binary"):
        parse(binary, "image.bin")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ")
    with pytest.raises(ParseError, match="no text"):
        parse(empty, "empty.txt")


def test_chunks_respect_paragraphs_token_limit_and_offsets(tmp_path: Path, count_tokens) -> None:
    long_para = " ".join(f"sentence{i} about pumps and valves." for i in range(300))
    text = f"Title\n\nShort first paragraph about the device.\n\n{long_para}\n\nLast words here."
    path = tmp_path / "doc.txt"
    path.write_text(text)
    chunks = chunk_sections(parse(path, "doc.txt"), count_tokens, max_tokens=64, overlap_tokens=16)
    assert len(chunks) > 5
    for c in chunks:
        assert count_tokens(c.text) <= 64
        assert text[c.char_start : c.char_end] == c.text
    # "Title" is too short to stand alone: it joins the next paragraph.
    assert chunks[0].text.startswith("Title") and "Short first paragraph" in chunks[0].text
    assert chunks[0].position == "beginning" and chunks[-1].position == "end"
    assert {c.position for c in chunks} == {"beginning", "middle", "end"}
    # Windows of the long paragraph overlap.
    windows = [c for c in chunks if "sentence" in c.text]
    assert windows[0].char_end > windows[1].char_start
    assert [c.index for c in chunks] == list(range(len(chunks)))


@pytest.mark.parametrize("fonttype", [3, 42])
def test_pdfs_from_another_producer(tmp_path: Path, count_tokens, fonttype: int) -> None:
    """PDFs not written by fpdf2: matplotlib's PDF backend, with Type 3 and with TrueType
    (Type 42) fonts, which encode text differently."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"pdf.fonttype": fonttype}):
        fig = plt.figure()
        fig.text(0.1, 0.6, "The warranty on the kettle lasts three years.")
        fig.text(0.1, 0.3, "Error E1042 means the valve is stuck.")
        fig.savefig(tmp_path / "figure.pdf")
        plt.close(fig)
    (section,) = parse(tmp_path / "figure.pdf", "figure.pdf")
    assert "warranty on the kettle lasts three years" in section.text
    assert "E1042" in section.text
    chunks = chunk_sections([section], count_tokens)
    assert chunks and all(c.page == 1 for c in chunks)


def test_a_real_pdf_without_text_fails_clearly() -> None:
    """matplotlib ships its toolbar icons as PDFs: vector drawings, no text."""
    import matplotlib

    icon = Path(matplotlib.get_data_path()) / "images" / "home.pdf"
    with pytest.raises(ParseError, match="no extractable text"):
        parse(icon, "home.pdf")
