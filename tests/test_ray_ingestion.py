"""`hearth ingest --ray` (issue 20): the Ray Data pipeline indexes files exactly as the
server's own worker does (same chunks, same vectors), and a server then finds them. A real
local Ray cluster; `-m "not ray"` skips it."""

from __future__ import annotations

import io
import re
from pathlib import Path

import lancedb
import numpy as np
import pytest

from retrieval.catalog import COMPLETED, Catalog
from tests.conftest import hearth_cli, start_server, stop_server
from tests.test_documents import write_pdf

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
pytest.importorskip("ray.data", reason="Ray is not installed (pip install 'ray[data]')")


def documents(folder: Path) -> list[Path]:
    folder.mkdir()
    pages = [
        f"Chapter {i}. The pressure relief valve of model K{i} opens at {3 + i} bar. " * 12
        for i in range(3)
    ]
    pdf = write_pdf(folder / "valves.pdf", pages)
    md = folder / "guide.md"
    md.write_text(
        "# Field guide\n\n## Storage\n\n"
        + "Keep the spare gaskets in the blue cabinet. " * 40
        + "\n\n## Calibration\n\nThe calibration code of this guide is QZ-7731.\n"
    )
    txt = folder / "notes.txt"
    txt.write_text("\n\n".join(f"Note {i}: the kiln is fired on day {i}." for i in range(60)))
    return [pdf, md, txt]


def rows(data: Path, store_id: str) -> dict[tuple[str, int], dict]:
    table = lancedb.connect(data / "lancedb").open_table("chunks")
    found = table.search().where(f"vector_store_id = '{store_id}'").limit(10_000).to_list()
    return {(r["filename"], r["chunk_index"]): r for r in found}


def test_ray_pipeline_indexes_like_the_worker(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = documents(tmp_path / "docs")
    # The server's own worker indexes them into one store...
    server = start_server(tmp_path, "--data-dir", str(data))
    try:
        client = server.client()
        store = client.vector_stores.create(name="worker")
        for path in files:
            done = client.vector_stores.files.upload_and_poll(
                vector_store_id=store.id, file=(path.name, io.BytesIO(path.read_bytes()))
            )
            assert done.status == COMPLETED
    finally:
        stop_server(server)
    # ...and the Ray pipeline (two embedding actors) into another.
    out = hearth_cli(
        "ingest",
        "--ray",
        "--ray-workers",
        "2",
        "--quiet",
        "--data-dir",
        str(data),
        "--store",
        "ray",
        *map(str, files),
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("completed") == 3, out.stdout

    catalog = Catalog(data)
    ray_store = next(s for s in catalog.list_stores() if s.name == "ray")
    assert ray_store.file_counts[COMPLETED] == 3
    worker_rows, ray_rows = rows(data, store.id), rows(data, ray_store.id)
    assert worker_rows.keys() == ray_rows.keys() and len(ray_rows) > 6
    for key, w in worker_rows.items():
        r = ray_rows[key]
        for field in ("text", "context", "page", "char_start", "char_end", "heading"):
            assert w[field] == r[field], (key, field)
        a, b = np.asarray(w["vector"]), np.asarray(r["vector"])
        assert float(a @ b) > 0.9999, key  # unit vectors: the same up to float noise
    counts = {f.file_id: f.chunks for f in catalog.list_files(ray_store.id)}
    assert sum(counts.values()) == len(ray_rows)
    catalog.close()

    # A server on the same data finds what the pipeline wrote.
    server = start_server(tmp_path, "--data-dir", str(data))
    try:
        hits = server.client().vector_stores.search(
            ray_store.id, query="What is the calibration code?"
        )
        assert any("QZ-7731" in h.content[0].text for h in hits.data[:3])
    finally:
        stop_server(server)


def test_a_server_indexes_through_ray_when_configured(tmp_path: Path) -> None:
    """`retrieval.ray_address`: the server's worker hands each job to the same pipeline
    and keeps its bookkeeping: completed files are found, an unreadable one fails with
    the reason, and the server stops cleanly afterwards."""
    config = tmp_path / "ray.toml"
    config.write_text('[retrieval]\nray_address = "local"\n')
    files = documents(tmp_path / "docs")
    server = start_server(tmp_path, "--config", str(config), "--data-dir", str(tmp_path / "d"))
    try:
        client = server.client()
        store = client.vector_stores.create(name="via-ray")
        guide = next(p for p in files if p.suffix == ".md")
        done = client.vector_stores.files.upload_and_poll(
            vector_store_id=store.id, file=(guide.name, io.BytesIO(guide.read_bytes()))
        )
        assert done.status == COMPLETED
        broken = client.vector_stores.files.upload_and_poll(
            vector_store_id=store.id, file=("broken.pdf", io.BytesIO(b"%PDF-1.4 not really"))
        )
        assert broken.status == "failed" and "broken.pdf" in broken.last_error.message
        hits = client.vector_stores.search(store.id, query="What is the calibration code?")
        assert any("QZ-7731" in h.content[0].text for h in hits.data[:3])
    finally:
        stop_server(server)
    log = server.proc.log_text()
    assert f"ingested guide.md into {store.id}" in log and "(on Ray)" in log, log[-3000:]
    # Ray in the process does not take over SIGTERM: Hearth's graceful shutdown ran.
    assert "Application shutdown complete" in log, log[-3000:]


def test_files_queued_together_go_to_ray_together(tmp_path: Path) -> None:
    """A server on Ray hands the jobs queued at once to one pipeline (one start, one
    model load in its actors), not one pipeline each; every file is indexed alike."""
    config = tmp_path / "ray.toml"
    config.write_text('[retrieval]\nray_address = "local"\n')
    server = start_server(tmp_path, "--config", str(config), "--data-dir", str(tmp_path / "d"))
    try:
        client = server.client()
        store = client.vector_stores.create(name="many")
        notes = [f"Note {i}: the door code is QX-{i:04d}.".encode() for i in range(6)]
        ids = [
            client.files.create(file=(f"note{i}.txt", io.BytesIO(note)), purpose="assistants").id
            for i, note in enumerate(notes)
        ]
        ids.append(
            client.files.create(
                file=("broken.pdf", io.BytesIO(b"%PDF-1.4 not really")), purpose="assistants"
            ).id
        )
        batch = client.vector_stores.file_batches.create_and_poll(store.id, file_ids=ids)
        assert (batch.file_counts.completed, batch.file_counts.failed) == (6, 1)
        hits = client.vector_stores.search(store.id, query="QX-0004")
        assert "QX-0004" in hits.data[0].content[0].text
    finally:
        stop_server(server)
    log = server.proc.log_text()
    together = [int(n) for n in re.findall(r"indexing (\d+) files on Ray in one pipeline", log)]
    assert sum(together) == 7 and max(together) >= 3, together
