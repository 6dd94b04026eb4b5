"""OpenAI Vector Stores API end to end: the official client, real files, a real LanceDB (and
the same tests on pgvector)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import RunningServer, hearth_cli, start_server, stop_server
from tests.shared_services import BACKENDS, chunk_backend_server
from tests.test_documents import write_pdf

FACT = "The Hearth test reactor runs on 47 hamster wheels."


@pytest.fixture(scope="module", params=BACKENDS)
def rag_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """Every test on it runs with each chunk backend: LanceDB, and pgvector (issue 20)."""
    with chunk_backend_server(tmp_path_factory.mktemp("rag"), request.param) as s:
        yield s


def upload(client: openai.OpenAI, store_id: str, name: str, data: bytes):
    return client.vector_stores.files.upload_and_poll(
        vector_store_id=store_id, file=(name, io.BytesIO(data)), poll_interval_ms=100
    )


def test_pdf_and_markdown_end_to_end(rag_server: RunningServer, tmp_path: Path) -> None:
    client = rag_server.client()
    store = client.vector_stores.create(name="manuals", metadata={"team": "qa"})
    assert store.object == "vector_store" and store.name == "manuals"
    pdf = write_pdf(
        tmp_path / "reactor.pdf",
        [
            "Introduction. This manual covers the installation of the device.",
            f"Power. {FACT} Keep them well fed.",
        ],
    )
    pdf_file = upload(client, store.id, "reactor.pdf", pdf.read_bytes())
    assert pdf_file.status == "completed", pdf_file.last_error
    md = b"# Garden\n\nTomatoes need sun.\n\n## Watering\n\nWater the basil every morning.\n"
    md_file = upload(client, store.id, "garden.md", md)
    assert md_file.status == "completed"
    store = client.vector_stores.retrieve(store.id)
    assert store.file_counts.completed == 2 and store.file_counts.total == 2

    results = client.vector_stores.search(store.id, query="How many hamster wheels power it?")
    top = results.data[0]
    assert top.filename == "reactor.pdf" and top.file_id == pdf_file.id
    assert "47 hamster wheels" in top.content[0].text
    raw = httpx.post(
        f"{rag_server.base_url}/vector_stores/{store.id}/search", json={"query": "basil watering"}
    ).json()
    assert raw["data"][0]["filename"] == "garden.md"
    assert raw["data"][0]["heading"] == "Watering"
    pdf_hit = httpx.post(
        f"{rag_server.base_url}/vector_stores/{store.id}/search", json={"query": "hamster wheels"}
    ).json()["data"][0]
    assert pdf_hit["page"] == 2
    # The parsed content, chunk by chunk in document order.
    parts = client.vector_stores.files.content(pdf_file.id, vector_store_id=store.id).data
    text = "\n".join(p.text for p in parts)
    assert len(parts) == pdf_file.chunk_count
    assert text.index("installation of the device") < text.index("47 hamster wheels")

    # Detaching a file removes its chunks from search; deleting the store removes it.
    client.vector_stores.files.delete(file_id=pdf_file.id, vector_store_id=store.id)
    again = client.vector_stores.search(store.id, query="hamster wheels")
    assert all(r.file_id != pdf_file.id for r in again.data)
    assert client.vector_stores.delete(store.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(store.id)


def test_failed_files_report_why(rag_server: RunningServer, tmp_path: Path) -> None:
    client = rag_server.client()
    store = client.vector_stores.create(name="bad")
    locked = write_pdf(tmp_path / "locked.pdf", ["secret"], password="pw")
    f = upload(client, store.id, "locked.pdf", locked.read_bytes())
    assert f.status == "failed" and "encrypted" in f.last_error.message
    g = upload(client, store.id, "blob.bin", bytes(range(256)) * 8)
    assert g.status == "failed" and "binary" in g.last_error.message
    # The worker goes on with the next job.
    ok = upload(client, store.id, "fine.txt", b"Perfectly ordinary text about kettles.")
    assert ok.status == "completed"
    counts = client.vector_stores.retrieve(store.id).file_counts
    assert counts.failed == 2 and counts.completed == 1


def test_hybrid_finds_exact_identifiers(rag_server: RunningServer) -> None:
    """Questions that hinge on an exact error code: embeddings see near-identical codes as
    near-identical; the full-text index does not."""
    client = rag_server.client()
    store = client.vector_stores.create(name="codes")
    causes = [
        "the valve is stuck",
        "the pump runs dry",
        "the filter is clogged",
        "the sensor is unplugged",
        "the fan is blocked",
        "the fuse has blown",
    ]
    codes = [f"E{1000 + (i * 7919) % 9000}" for i in range(36)]
    paragraphs = [
        f"Error {code}: {causes[i % len(causes)]}; restart the unit after fixing it."
        for i, code in enumerate(codes)
    ]
    upload(client, store.id, "errors.txt", "\n\n".join(paragraphs).encode())

    def rank(mode: str, code: str) -> int:
        data = httpx.post(
            f"{rag_server.base_url}/vector_stores/{store.id}/search",
            json={"query": f"What does error {code} mean?", "mode": mode, "max_num_results": 20},
        ).json()["data"]
        texts = [d["content"][0]["text"] for d in data]
        return next((i for i, t in enumerate(texts) if f"Error {code}:" in t), 99)

    asked = codes[5:35:3]
    hybrid = [rank("hybrid", c) for c in asked]
    vector = [rank("vector", c) for c in asked]
    assert sum(r == 0 for r in hybrid) >= 8, hybrid
    assert sum(r == 0 for r in hybrid) > sum(r == 0 for r in vector), (hybrid, vector)


def test_attribute_filters(rag_server: RunningServer) -> None:
    client = rag_server.client()
    store = client.vector_stores.create(name="filtered")
    for lang in ("en", "de"):
        f = client.files.create(
            file=(
                f"{lang}.txt",
                io.BytesIO(f"Release notes ({lang}): the kettle now boils faster.".encode()),
            ),
            purpose="assistants",
        )
        client.vector_stores.files.create_and_poll(
            vector_store_id=store.id, file_id=f.id, attributes={"lang": lang}, poll_interval_ms=100
        )
    hits = client.vector_stores.search(
        store.id, query="kettle", filters={"type": "eq", "key": "lang", "value": "de"}
    )
    assert [h.attributes["lang"] for h in hits.data] == ["de"]
    # Attributes changed after ingestion: searches filter on the new ones at once.
    en = next(f for f in client.vector_stores.files.list(store.id) if f.attributes["lang"] == "en")
    updated = client.vector_stores.files.update(
        en.id, vector_store_id=store.id, attributes={"lang": "de", "rev": 2}
    )
    assert updated.attributes == {"lang": "de", "rev": 2}
    hits = client.vector_stores.search(
        store.id, query="kettle", filters={"type": "eq", "key": "lang", "value": "de"}
    )
    assert len(hits.data) == 2
    assert {h.attributes.get("rev") for h in hits.data} == {None, 2}
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.update("file-nope", vector_store_id=store.id, attributes={})
    r = httpx.post(
        f"{rag_server.base_url}/vector_stores/{store.id}/search",
        json={"query": "kettle", "filters": {"type": "near", "key": "x"}},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "filters"


def test_listing_paging_and_bad_ids(rag_server: RunningServer) -> None:
    client = rag_server.client()
    made = [client.vector_stores.create(name=f"s{i}").id for i in range(4)]
    first = client.vector_stores.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    assert set(made) <= {s.id for s in client.vector_stores.list(limit=2)}  # auto-paging
    renamed = client.vector_stores.update(made[0], name="renamed", metadata={"k": "v"})
    assert renamed.name == "renamed" and renamed.metadata == {"k": "v"}
    for call in (
        lambda: client.vector_stores.retrieve("vs_nope"),
        lambda: client.vector_stores.files.create(vector_store_id=made[0], file_id="file-nope"),
        lambda: client.vector_stores.search("vs_nope", query="x"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()


def test_deleting_a_file_removes_it_from_stores(rag_server: RunningServer) -> None:
    client = rag_server.client()
    store = client.vector_stores.create(name="transient")
    f = upload(client, store.id, "t.txt", b"Ephemeral content about lighthouses.")
    assert client.vector_stores.search(store.id, query="lighthouses").data
    client.files.delete(f.id)
    assert not client.vector_stores.search(store.id, query="lighthouses").data
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.retrieve(file_id=f.id, vector_store_id=store.id)


def test_file_batches(rag_server: RunningServer) -> None:
    """OpenAI's file batches, as its docs ingest files: upload_and_poll, list, per-file
    attributes, errors."""
    client = rag_server.client()
    store = client.vector_stores.create(name="batches")
    notes = {
        f"note-{i}.md": f"# Note {i}\n\nThe code word of batch note {i} is zebra-{i * 7}.\n"
        for i in range(3)
    }
    batch = client.vector_stores.file_batches.upload_and_poll(
        vector_store_id=store.id,
        files=[(name, io.BytesIO(text.encode())) for name, text in notes.items()],
        poll_interval_ms=100,
    )
    assert batch.object == "vector_store.files_batch" and batch.id.startswith("vsfb_")
    assert batch.status == "completed" and batch.vector_store_id == store.id
    assert (batch.file_counts.completed, batch.file_counts.total) == (3, 3)
    files = client.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id)
    assert len(files.data) == 3 and {f.status for f in files.data} == {"completed"}
    hits = client.vector_stores.search(store.id, query="code word of batch note 2")
    assert "zebra-14" in hits.data[0].content[0].text
    content = client.vector_stores.files.content(hits.data[0].file_id, vector_store_id=store.id)
    assert "zebra-14" in "".join(part.text for part in content.data)

    # `files` gives each file its own attributes; a file attached again counts again.
    extra = client.files.create(
        file=("extra.md", io.BytesIO(b"Owls hunt at night.")), purpose="assistants"
    )
    again = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id,
        files=[{"file_id": extra.id, "attributes": {"lang": "en"}}, {"file_id": files.data[0].id}],
        poll_interval_ms=100,
    )
    assert again.status == "completed" and again.file_counts.total == 2
    assert client.vector_stores.files.retrieve(extra.id, vector_store_id=store.id).attributes == {
        "lang": "en"
    }
    assert client.vector_stores.retrieve(store.id).file_counts.total == 4
    # Cancelling a finished batch changes nothing.
    done = client.vector_stores.file_batches.cancel(again.id, vector_store_id=store.id)
    assert done.status == "completed"

    with pytest.raises(openai.NotFoundError):  # an unknown file: nothing is attached
        client.vector_stores.file_batches.create(
            vector_store_id=store.id, file_ids=[extra.id, "file-nope"]
        )
    assert client.vector_stores.retrieve(store.id).file_counts.total == 4
    with pytest.raises(openai.BadRequestError):  # neither file_ids nor files
        client.vector_stores.file_batches.create(vector_store_id=store.id)
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.file_batches.retrieve("vsfb_nope", vector_store_id=store.id)


def test_chunking_strategy(rag_server: RunningServer) -> None:
    """OpenAI's chunking_strategy on a file, a batch and a new store: static sizes change
    how the file is cut (and the file says how), auto is the server's, bad sizes are 400s
    in OpenAI's shape that attach nothing."""
    client = rag_server.client()
    text = "\n\n".join(
        f"Paragraph {i}: the {i}th lantern of the harbour is lit at dusk by keeper {i * 3}, "
        f"checked at midnight, and put out at dawn; its oil is kept in store room {i + 40}."
        for i in range(40)
    )
    stored = client.files.create(
        file=("harbour.txt", io.BytesIO(text.encode())), purpose="assistants"
    )
    store = client.vector_stores.create(name="chunking")

    def attach(strategy: dict | None) -> tuple[int, dict]:
        extra = {"chunking_strategy": strategy} if strategy else {}
        vsf = client.vector_stores.files.create_and_poll(
            file_id=stored.id, vector_store_id=store.id, poll_interval_ms=100, **extra
        )
        assert vsf.status == "completed", vsf.last_error
        return vsf.model_extra["chunk_count"], vsf.chunking_strategy.model_dump()

    def static(size: int, overlap: int) -> dict:
        return {
            "type": "static",
            "static": {"max_chunk_size_tokens": size, "chunk_overlap_tokens": overlap},
        }

    server_default = attach(None)
    assert server_default == attach({"type": "auto"}) and server_default[1] == static(256, 32)
    small, large = attach(static(100, 50)), attach(static(2000, 0))
    assert small[1] == static(100, 50) and large[1] == static(2000, 0)
    assert small[0] > server_default[0] > large[0] >= 1, (small, server_default, large)
    content = client.vector_stores.files.content(stored.id, vector_store_id=store.id)
    assert len(content.data) == large[0] and "Paragraph 39" in content.data[-1].text

    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id,
        files=[{"file_id": stored.id, "chunking_strategy": static(100, 0)}],
        chunking_strategy=static(2000, 0),  # a file's own strategy comes first
        poll_interval_ms=100,
    )
    assert batch.status == "completed"
    (vsf,) = client.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id).data
    assert vsf.chunking_strategy.model_dump() == static(100, 0)
    made = client.vector_stores.create(file_ids=[stored.id], chunking_strategy=static(2000, 0))
    vsf = client.vector_stores.files.poll(stored.id, vector_store_id=made.id, poll_interval_ms=100)
    assert vsf.model_extra["chunk_count"] == large[0]

    for bad, param in [
        (static(100, 60), "chunking_strategy"),  # overlap above half the size
        (static(50, 0), "chunking_strategy.static.max_chunk_size_tokens"),
        ({"type": "static"}, "chunking_strategy"),
        ({"type": "semantic"}, "chunking_strategy.type"),
    ]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.vector_stores.files.create(
                file_id=stored.id, vector_store_id=store.id, chunking_strategy=bad
            )
        assert caught.value.body["param"] == param, caught.value.body
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.create(file_ids=[stored.id], chunking_strategy=static(100, 99))
    assert client.vector_stores.retrieve(store.id).file_counts.total == 1


def test_kill_during_ingestion_then_restart(tmp_path: Path) -> None:
    """kill -9 in the middle of a job; after a restart the job finishes and every chunk is
    in LanceDB exactly once."""
    import lancedb

    data = tmp_path / "data"
    text = "\n\n".join(
        f"Paragraph {i} describes maintenance step {i} of the boiler in detail, "
        f"including the torque for bolt {i} and the order of the valves."
        for i in range(400)
    ).encode()
    server = start_server(tmp_path, "--data-dir", str(data))
    client = server.client()
    store = client.vector_stores.create(name="crash")
    f = client.files.create(file=("boiler.txt", io.BytesIO(text)), purpose="assistants")
    vsf = client.vector_stores.files.create(vector_store_id=store.id, file_id=f.id)
    assert vsf.status == "in_progress"
    server.proc.process.kill()  # SIGKILL: no shutdown code runs
    server.proc.process.wait()

    server = start_server(tmp_path, "--data-dir", str(data))
    try:
        done = server.client().vector_stores.files.poll(
            file_id=f.id, vector_store_id=store.id, poll_interval_ms=100
        )
        assert done.status == "completed"
        chunk_count = done.model_extra["chunk_count"]
        assert chunk_count > 30  # 400 paragraphs packed ~10 to a 256-token chunk
    finally:
        stop_server(server)
    table = lancedb.connect(str(data / "lancedb")).open_table("chunks")
    rows = table.search().where(f"file_id = '{f.id}'").limit(100_000).to_list()
    indexes = sorted(r["chunk_index"] for r in rows)
    assert indexes == list(range(chunk_count))


def test_cli_ingest_and_search(rag_server: RunningServer, tmp_path: Path) -> None:
    import subprocess

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tea.md").write_text("# Tea\n\nGreen tea is steeped at 80 degrees for two minutes.\n")
    write_pdf(docs / "coffee.pdf", ["Espresso is brewed at nine bar of pressure."])
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really")

    def hearth(*args: str) -> subprocess.CompletedProcess[str]:
        return hearth_cli(*args, "--url", rag_server.url, timeout=120)

    ingest = hearth("ingest", str(docs), "--store", "drinks", "--quiet")
    assert ingest.returncode == 1  # one file failed, and the exit code says so
    lines = ingest.stdout.splitlines()
    assert any(line.strip().startswith("completed") and "tea.md" in line for line in lines)
    assert any(line.strip().startswith("failed") and "broken.pdf" in line for line in lines)
    found = hearth("search", "How hot should green tea water be?", "--store", "drinks")
    assert found.returncode == 0, found.stderr
    assert "tea.md" in found.stdout.splitlines()[0]
    missing = hearth("search", "x", "--store", "no-such-store")
    assert missing.returncode == 1 and "no vector store" in missing.stderr


def test_watched_folder(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "first.txt").write_text("The lighthouse keeper feeds the gulls at dawn.")
    config = tmp_path / "watch.toml"
    config.write_text(
        f'[retrieval]\nwatch_dir = "{inbox}"\nwatch_store = "inbox"\nwatch_interval = 0.2\n'
    )
    server = start_server(tmp_path, "--config", str(config), "--data-dir", str(tmp_path / "d"))
    client = server.client()

    def texts(query: str) -> list[str]:
        stores = [s for s in client.vector_stores.list() if s.name == "inbox"]
        if not stores or stores[0].file_counts.in_progress:
            return []
        return [
            h.content[0].text for h in client.vector_stores.search(stores[0].id, query=query).data
        ]

    def eventually(predicate, timeout: float = 20.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        raise AssertionError("condition not met in time")

    try:
        eventually(lambda: any("gulls" in t for t in texts("gulls")))
        (inbox / "first.txt").write_text("The keeper now feeds the seals instead.")
        eventually(
            lambda: (
                any("seals" in t for t in texts("seals"))
                and not any("gulls" in t for t in texts("gulls"))
            )
        )
        (inbox / "first.txt").unlink()
        eventually(lambda: not texts("seals"))
    finally:
        stop_server(server)
