"""Issue 15: contextual chunks, fusion that keeps exact matches, the reranker and /v1/rerank.

The reranker here is a tiny random cross-encoder written in transformers' layout and
converted by `hearth models convert` (no reranker can be downloaded in tests): its scores
mean nothing, but they are a real llama.cpp rank-pooling model's scores, so the tests check
that search and /v1/rerank order by them.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import lancedb
import pyarrow as pa
import pytest

from bench.random_cross_encoder import write_random_cross_encoder
from retrieval.catalog import Catalog
from retrieval.chunking import chunk_sections
from retrieval.files import FileStore
from retrieval.fusion import FusionWeights, exact_terms, fuse
from retrieval.parsing import parse
from tests.conftest import RunningServer, hearth_cli, start_server, stop_server
from tests.shared_services import BACKENDS, chunk_backend_server

MANUAL = """# Zanzibar Pump Manual

Read this before the first start.

## Priming

Fill the housing with water until it overflows, then close the bleed screw and switch the
unit on. The motor hums for up to a minute while air leaves the line.

## Maintenance

### Filter

Rinse the mesh cartridge under warm water every month and let it dry before refitting.
"""

ERROR_NOTES = [
    "Error E4417 means the intake valve is stuck; tap the valve housing and restart.",
    "Error E4471 means the pump is running dry; refill the reservoir before restarting.",
    "Error E7144 means the filter is clogged; rinse the filter under warm water.",
    "Error E1447 means the pressure sensor is unplugged; reseat the sensor cable.",
]


# --- without a server -----------------------------------------------------------------------


def test_exact_terms_are_what_prose_is_not() -> None:
    assert exact_terms("What does parallel=n in DEB_BUILD_OPTIONS mean?") == [
        "parallel=n",
        "DEB_BUILD_OPTIONS",
    ]
    assert exact_terms("Error E1042 and the --no-deps flag") == ["E1042", "--no-deps"]
    assert exact_terms("Where is /var/tmp kept?") == ["/var/tmp"]
    assert exact_terms("how do I skip the tests when it's late?") == []


def test_fusion_weights_apply() -> None:
    lists = {"vector": ["a", "b", "c"], "text": ["b", "a", "c"], "exact": ["c"]}
    assert fuse(lists, FusionWeights(vector=2, text=1, exact=0))[0][0] == "a"
    assert fuse(lists, FusionWeights(vector=1, text=2, exact=0))[0][0] == "b"
    assert fuse(lists, FusionWeights(vector=1, text=1, exact=3))[0][0] == "c"
    scores = [s for _, s in fuse(lists, FusionWeights())]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1


def test_markdown_chunks_carry_their_heading_path(tmp_path: Path) -> None:
    path = tmp_path / "pump.md"
    path.write_text(MANUAL)
    chunks = chunk_sections(parse(path, "pump.md"), lambda t: len(t.split()), filename="pump.md")
    by_heading = {c.heading: c for c in chunks}
    assert by_heading["Filter"].context == "Zanzibar Pump Manual > Maintenance > Filter"
    assert by_heading["Priming"].context == "Zanzibar Pump Manual > Priming"
    # The context is indexed, never part of the text shown.
    assert "Zanzibar" not in by_heading["Filter"].text
    assert by_heading["Filter"].indexed_text.startswith("Zanzibar Pump Manual > Maintenance")


def test_paragraphs_are_packed_within_a_section(tmp_path: Path) -> None:
    paras = [f"Paragraph {i} says something about pumps and valves today." for i in range(12)]
    text = "# Guide\n\n## One\n\n" + "\n\n".join(paras[:6])
    text += "\n\n## Two\n\n" + "\n\n".join(paras[6:])
    path = tmp_path / "guide.md"
    path.write_text(text)
    words = lambda t: len(t.split())  # noqa: E731
    chunks = chunk_sections(parse(path, "guide.md"), words, max_tokens=40, filename="guide.md")
    assert len(chunks) < len(paras)
    for c in chunks:
        assert words(c.text) <= 40
        assert text[c.char_start : c.char_end] == c.text
        sections = {int(p.split()[1]) < 6 for p in paras if p in c.text}
        assert len(sections) == 1, c.text  # never across a heading
    assert all(p in "".join(c.text for c in chunks) for p in paras)


def _write_kerned_pdf(path: Path) -> None:
    """Words separated by TJ offsets, as LaTeX writes them, in a font whose declared space
    is wide: pypdf's own word-gap test glues them ("Themailspoolis/var/mail")."""
    widths = " ".join(["1000"] + ["500"] * 94)  # char 32 (space) wide, the rest 500
    content = b"BT /F1 12 Tf 72 700 Td [(The)-300(mail)-300(spool)-300(is)-300(/var/mail)] TJ ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /FirstChar 32 /LastChar 126 "
        b"/Widths [" + widths.encode() + b"] >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer << /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    path.write_bytes(out)


def test_pdf_words_set_apart_by_kerning_stay_apart(tmp_path: Path) -> None:
    path = tmp_path / "kerned.pdf"
    _write_kerned_pdf(path)
    assert parse(path, "kerned.pdf")[0].text == "The mail spool is /var/mail"


def test_tables_of_contents_are_dropped() -> None:
    from retrieval.parsing import clean_pdf_pages

    page = "Contents\n5.6 Uploading a package . . . . . . . . 33\n5.7 Notes ........ 35\nBody text."
    assert clean_pdf_pages([page]) == ["Contents\nBody text."]


def test_pdf_sections_follow_the_outline(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title("Kettle Handbook")
    pdf.set_font("helvetica", size=11)

    def write(text: str) -> None:
        pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")

    pdf.add_page()
    pdf.start_section("Safety")
    write("Safety\n\nNever fill the kettle above the maximum mark.")
    pdf.start_section("Descaling", level=1)
    write("Descaling\n\nBoil a mixture of vinegar and water, then rinse twice.")
    pdf.add_page()
    write("Let the kettle cool for ten minutes before descaling again.")
    pdf.start_section("Warranty")
    write("Warranty\n\nThe kettle is covered for two years.")
    path = tmp_path / "kettle.pdf"
    pdf.output(str(path))

    sections = parse(path, "kettle.pdf")
    found = {(s.page, s.heading_path): s.text for s in sections}
    assert all(s.title == "Kettle Handbook" for s in sections)
    assert "maximum mark" in found[(1, ("Safety",))]
    assert "vinegar" in found[(1, ("Safety", "Descaling"))]
    # A page starts under the heading the previous page ended in.
    assert "cool for ten minutes" in found[(2, ("Safety", "Descaling"))]
    assert "two years" in found[(2, ("Warranty",))]
    chunks = chunk_sections(sections, lambda t: len(t.split()), filename="kettle.pdf")
    assert any(c.context == "Kettle Handbook > Safety > Descaling (page 2)" for c in chunks)


# --- a server without a reranker ---------------------------------------------------------------


def _upload(http: httpx.Client, store: str, name: str, data: bytes) -> str:
    file_id = http.post(
        "/v1/files", data={"purpose": "assistants"}, files={"file": (name, data)}
    ).json()["id"]
    http.post(f"/v1/vector_stores/{store}/files", json={"file_id": file_id})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = http.get(f"/v1/vector_stores/{store}/files/{file_id}").json()
        if state["status"] != "in_progress":
            assert state["status"] == "completed", state
            return file_id
        time.sleep(0.1)
    raise AssertionError(f"{name} was not ingested in time")


def _search(http: httpx.Client, store: str, query: str, **extra: object) -> list[dict]:
    r = http.post(f"/v1/vector_stores/{store}/search", json={"query": query, **extra})
    assert r.status_code == 200, r.text
    return r.json()["data"]


@pytest.fixture(scope="module", params=BACKENDS)
def plain_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """Each chunk backend: LanceDB, and pgvector (issue 20)."""
    with chunk_backend_server(tmp_path_factory.mktemp("plain"), request.param) as server:
        yield server


def test_context_is_searchable_but_never_shown(plain_server: RunningServer) -> None:
    with httpx.Client(base_url=plain_server.url, timeout=60) as http:
        store = http.post("/v1/vector_stores", json={"name": "manual"}).json()["id"]
        _upload(http, store, "pump.md", MANUAL.encode())
        # "Zanzibar" is only in the title: the Filter chunk is found through its context.
        hits = _search(http, store, "Zanzibar mesh cartridge", mode="text")
        assert hits and "mesh cartridge" in hits[0]["content"][0]["text"]
        assert "Zanzibar" not in hits[0]["content"][0]["text"]
        assert hits[0]["heading"] == "Filter"


def test_exact_identifiers_win_hybrid_search(plain_server: RunningServer) -> None:
    with httpx.Client(base_url=plain_server.url, timeout=60) as http:
        store = http.post("/v1/vector_stores", json={"name": "codes"}).json()["id"]
        _upload(http, store, "codes.txt", "\n\n".join(ERROR_NOTES).encode())
        for note in ERROR_NOTES:
            code = note.split()[1]
            hits = _search(http, store, f"what does {code} mean?", max_num_results=4)
            assert code in hits[0]["content"][0]["text"], (code, hits[0])
            assert 0 < hits[-1]["score"] <= hits[0]["score"] <= 1


def test_rerank_without_a_reranker_is_404(plain_server: RunningServer) -> None:
    r = httpx.post(f"{plain_server.url}/v1/rerank", json={"query": "q", "documents": ["d"]})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert "--rerank-model" in r.json()["error"]["message"]


def test_old_chunk_format_is_indexed_again(tmp_path: Path) -> None:
    """A store written before contextual chunks (no format on its table) is re-ingested
    at start, and found afterwards."""
    data = tmp_path / "data"
    files = FileStore(data, 1 << 20)
    stored = files.add(
        io.BytesIO(b"The lighthouse keeper logs every passing ship."), "notes.txt", "assistants"
    )
    files.close()
    catalog = Catalog(data)
    vs = catalog.create_store("old", {})
    vsf = catalog.add_file(vs.id, stored.id, {})
    assert catalog.finish_job(vsf, 1)
    catalog.close()
    db = lancedb.connect(str(data / "lancedb"))
    db.create_table(
        "chunks",
        schema=pa.schema(
            [
                pa.field("id", pa.string()),
                pa.field("text", pa.string()),
                pa.field("vector", pa.list_(pa.float32(), 384)),
            ]
        ),
    )
    server = start_server(tmp_path, "--data-dir", str(data))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                state = http.get(f"/v1/vector_stores/{vs.id}/files/{stored.id}").json()
                if state["status"] == "completed" and state["chunk_count"] > 0:
                    break
                time.sleep(0.2)
            assert state["status"] == "completed" and state["chunk_count"] == 1, state
            hits = _search(http, vs.id, "lighthouse keeper")
            assert hits and "passing ship" in hits[0]["content"][0]["text"]
    finally:
        stop_server(server)
    table = lancedb.connect(str(data / "lancedb")).open_table("chunks")
    assert table.schema.metadata[b"hearth_chunk_format"] == b"2"


# --- a server with a reranker -----------------------------------------------------------------

DOCS = [
    "Fill the housing with water until it overflows before the first start.",
    "Rinse the mesh cartridge under warm water every month.",
    "The motor hums for up to a minute while air leaves the line.",
    "Replace the fuse with one of the same rating.",
    "Store the pump indoors over the winter.",
]


@pytest.fixture(scope="module")
def rerank_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("rerank")
    words = sorted({w.strip(".,").lower() for d in DOCS for w in d.split()})
    source = write_random_cross_encoder(tmp / "tiny-reranker", words)
    model = tmp / "tiny-reranker.gguf"
    r = hearth_cli("models", "convert", str(source), str(model))
    assert r.returncode == 0, r.stderr
    server = start_server(tmp, "--data-dir", str(tmp / "data"), "--rerank-model", str(model))
    yield server
    stop_server(server)


def test_rerank_api(rerank_server: RunningServer) -> None:
    url = f"{rerank_server.url}/v1/rerank"
    r = httpx.post(url, json={"query": "how do I clean the filter?", "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    results = body["results"]
    assert sorted(x["index"] for x in results) == list(range(len(DOCS)))
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert body["model"] == "tiny-reranker" and body["usage"]["total_tokens"] > 0
    assert "document" not in results[0]

    top = httpx.post(
        url,
        json={
            "query": "how do I clean the filter?",
            "documents": [{"text": d} for d in DOCS],
            "top_n": 2,
            "return_documents": True,
            "model": "tiny-reranker",
        },
    ).json()["results"]
    assert [x["index"] for x in top] == [x["index"] for x in results[:2]]
    assert top[0]["document"]["text"] == DOCS[top[0]["index"]]
    # llama-server's other paths answer the same.
    alias = httpx.post(
        f"{rerank_server.url}/rerank", json={"query": "q", "documents": DOCS[:1], "top_n": 9}
    )
    assert alias.status_code == 200 and len(alias.json()["results"]) == 1

    for bad, status in [
        ({"query": "q", "documents": []}, 400),
        ({"query": " ", "documents": ["d"]}, 400),
        ({"query": "q", "documents": ["d"], "top_n": 0}, 400),
        ({"documents": ["d"]}, 400),
        ({"query": "q", "documents": ["d"], "model": "nope"}, 404),
    ]:
        r = httpx.post(url, json=bad)
        assert r.status_code == status, (bad, r.text)
        assert "message" in r.json()["error"]
    models = httpx.get(f"{rerank_server.url}/v1/models").json()["data"]
    assert any(m["id"] == "tiny-reranker" and m["meta"]["kind"] == "rerank" for m in models)


def test_search_is_reordered_by_the_reranker(rerank_server: RunningServer) -> None:
    query = "water"
    with httpx.Client(base_url=rerank_server.url, timeout=60) as http:
        store = http.post("/v1/vector_stores", json={"name": "pump"}).json()["id"]
        for i, doc in enumerate(DOCS):
            _upload(http, store, f"note-{i}.txt", doc.encode())
        first_stage = _search(http, store, query, rerank=False, max_num_results=5)
        reranked = _search(http, store, query, max_num_results=5)
        declined = _search(
            http, store, query, max_num_results=5, ranking_options={"ranker": "none"}
        )
        texts = [h["content"][0]["text"] for h in first_stage]
        # What the reranker reads in search: the chunk's context (here the file's name),
        # then its text.
        indexed = [f"{Path(h['filename']).stem}\n{h['content'][0]['text']}" for h in first_stage]
        scored = http.post("/v1/rerank", json={"query": query, "documents": indexed}).json()
    assert [h["content"][0]["text"] for h in declined] == texts
    reranked_texts = [h["content"][0]["text"] for h in reranked]
    assert reranked_texts != texts, "the constructed case must differ from the first stage"
    assert reranked_texts == [texts[x["index"]] for x in scored["results"]]
    scores = [h["score"] for h in reranked]
    assert scores == sorted(scores, reverse=True)
    assert scores == pytest.approx([x["relevance_score"] for x in scored["results"]], abs=1e-3)


def test_eval_cli_reports_every_stage(rerank_server: RunningServer, tmp_path: Path) -> None:
    qa = tmp_path / "qa.json"
    qa.write_text(
        json.dumps(
            [
                {"question": "How do I clean the cartridge?", "contains": "mesh cartridge"},
                {"question": "What should I do before winter?", "contains": "indoors"},
            ]
        )
    )
    with httpx.Client(base_url=rerank_server.url, timeout=60) as http:
        store = http.post("/v1/vector_stores", json={"name": "evalset"}).json()["id"]
        for i, doc in enumerate(DOCS):
            _upload(http, store, f"doc-{i}.txt", doc.encode())
    r: subprocess.CompletedProcess[str] = hearth_cli(
        "eval", "retrieval", str(qa), "--store", "evalset", "--url", rerank_server.url, "--misses"
    )
    assert r.returncode == 0, r.stderr
    rows = {
        line.split("|")[1].strip(): [float(x) for x in line.split("|")[2:-1]]
        for line in r.stdout.splitlines()
        if line.startswith("| ") and "stage" not in line
    }
    assert list(rows) == ["vector", "text", "hybrid", "hybrid + rerank"]
    for values in rows.values():
        assert len(values) == 6 and all(0 <= v <= 1 for v in values)  # R@1,3,5,10, MRR, nDCG
    assert "| stage | recall@1 |" in r.stdout and "nDCG@10" in r.stdout


def test_numbered_headings_stand_in_for_a_missing_outline() -> None:
    from retrieval.parsing import _numbered_headings

    page = (
        "3.17. /srv : Data for services\n3.17.1. Purpose\n/srv holds served data.\n"
        "1.2 million users came.\n2.6 kernels are old\n1. Unpack it"
    )
    assert _numbered_headings([page]) == {
        0: [(0, "3.17. /srv : Data for services"), (1, "3.17.1. Purpose")]
    }
