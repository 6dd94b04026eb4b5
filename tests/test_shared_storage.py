"""Shared retrieval state (issue 20): chunks and uploaded bytes in an S3 bucket (SeaweedFS),
the catalog in PostgreSQL, and two Hearth processes that see each other's files, stores
and chunks. Real servers, started by the tests; `-m "not shared_storage"` skips them."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest

from retrieval.blobs import FileTooLarge, ObjectBlobs
from retrieval.catalog import COMPLETED, IN_PROGRESS, Catalog
from retrieval.chunk_store import ChunkStore
from retrieval.chunking import Chunk
from retrieval.pg_chunk_store import PgChunkStore
from retrieval.s3 import S3Options, bucket_path
from tests.conftest import RunningServer, hearth_cli, start_server, stop_server
from tests.shared_services import S3Server, postgres, seaweedfs
from tests.test_file_batches import check_cancelling_a_batch
from tests.test_several_processes import check_one_claim_at_a_time

pytestmark = pytest.mark.shared_storage


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with seaweedfs(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with postgres() as url:
        yield url


def options(s3: S3Server) -> S3Options:
    return S3Options(
        endpoint=s3.endpoint,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


# --- the pieces, each against the real server ---------------------------------------------


def test_catalog_jobs_are_claimed_by_one_process(database: str) -> None:
    """Two catalogs on one PostgreSQL (as two processes would have): a queued job is
    handed to one of them at a time, and released when its holder is done or gone."""
    first, second = check_one_claim_at_a_time(lambda: Catalog(database))
    # A process that dies drops its connection, and its claim with it.
    third = Catalog(database)
    with third.next_job() as held:
        assert held is not None and held.file_id == "file-b"
        third.close()

        def claimable() -> bool:
            with second.next_job() as after:
                return after is not None and after.file_id == "file-b"

        wait_for(claimable, timeout=10)  # once the server has seen the connection go
    for catalog in (first, second):
        catalog.close()


def test_cancelling_a_batch_on_postgresql(database: str) -> None:
    catalog = Catalog(database)
    try:
        check_cancelling_a_batch(catalog)
    finally:
        catalog.close()


def test_concurrent_writers_lose_no_update(database: str, s3: S3Server) -> None:
    """Catalog: two processes attaching files to one store at once (every attach kept, job
    ids distinct). Chunks: two writers upserting different files into one bucket table at
    once (every row kept; Lance's optimistic commits retried on conflict)."""
    catalogs = [Catalog(database), Catalog(database)]
    store = catalogs[0].create_store("writers", {})

    def attach(i: int) -> int:
        return catalogs[i % 2].add_file(store.id, f"file-{i}", {"i": i}).seq

    with ThreadPoolExecutor(8) as pool:
        seqs = list(pool.map(attach, range(40)))
    assert len(set(seqs)) == 40
    got = catalogs[1].get_store(store.id)
    assert got is not None and got.file_counts[IN_PROGRESS] == 40

    uri = f"s3://{s3.bucket}/writers"
    writers = [ChunkStore(uri, 4, options(s3).lance_options()) for _ in range(2)]

    def upsert(i: int) -> None:
        chunk = Chunk(0, f"chunk of file {i}", 0, 9, None, None, "beginning")
        vector = np.eye(4, dtype=np.float32)[i % 4 : i % 4 + 1]
        writers[i % 2].upsert("vs_w", f"file-{i}", f"f{i}.txt", [chunk], vector, {})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(upsert, range(12)))
    assert writers[0].count("vs_w") == 12 and writers[1].count("vs_w") == 12
    assert writers[1].pairs() == {("vs_w", f"file-{i}") for i in range(12)}
    for catalog in catalogs:
        catalog.close()


def test_object_blobs_round_trip(s3: S3Server, tmp_path: Path) -> None:
    s3_options = options(s3)
    blobs = ObjectBlobs(
        s3_options.arrow_filesystem(), bucket_path(f"s3://{s3.bucket}/blobs", "files"), tmp_path
    )
    body = b"x" * 3_000_000
    assert blobs.put("file-1", io.BytesIO(body), 4 << 20) == len(body)
    with blobs.readable("file-1") as path:
        assert path.read_bytes() == body
    with blobs.open("file-1") as stream:
        assert stream.read() == body
    with pytest.raises(FileTooLarge):
        blobs.put("file-2", io.BytesIO(body), 1 << 20)
    assert set(blobs.names()) == {"file-1"}  # the refused one never reached the bucket
    blobs.delete("file-1")
    blobs.delete("file-1")  # already gone: no error
    assert blobs.names() == {}
    assert list(tmp_path.iterdir()) == []  # spooled copies are removed


# --- two Hearth processes, one bucket and one database -------------------------------------


@pytest.fixture(scope="module")
def two_servers(
    tmp_path_factory: pytest.TempPathFactory, s3: S3Server, database: str
) -> Iterator[tuple[RunningServer, RunningServer]]:
    tmp = tmp_path_factory.mktemp("replicas")
    config = tmp / "hearth.toml"
    config.write_text(f'[retrieval]\n{s3.toml("hearth")}database_url = "{database}"\n')
    servers = []
    try:
        for name in ("a", "b"):
            # Each has its own data directory, as on another machine.
            server = start_server(tmp, "--config", str(config), "--data-dir", str(tmp / name))
            server.data_dir = tmp / name  # type: ignore[attr-defined]
            servers.append(server)
        yield servers[0], servers[1]
    finally:
        for s in servers:
            stop_server(s)


def manual(marker: str) -> bytes:
    return (
        f"# Maintenance manual {marker}\n\n"
        "The boiler is inspected every spring. Valves are opened in order.\n\n"
        f"The inspection code of this manual is {marker}.\n"
    ).encode()


def found(client: openai.OpenAI, store_id: str, marker: str) -> bool:
    hits = client.vector_stores.search(store_id, query=f"inspection code {marker}").data
    return any(marker in h.content[0].text for h in hits[:3])


def test_one_process_uploads_the_other_searches_and_deletes(
    two_servers: tuple[RunningServer, RunningServer],
) -> None:
    a, b = (s.client() for s in two_servers)
    f = a.files.create(file=("manual.md", io.BytesIO(manual("QX-4417"))), purpose="assistants")
    store = a.vector_stores.create(name="shared")
    a.vector_stores.files.create(vector_store_id=store.id, file_id=f.id)
    # B sees the file, its bytes, the store and the job's progress.
    assert b.files.retrieve(f.id).filename == "manual.md"
    assert b.files.content(f.id).read() == manual("QX-4417")
    wait_for(
        lambda: b.vector_stores.files.retrieve(f.id, vector_store_id=store.id).status == COMPLETED
    )
    assert b.vector_stores.retrieve(store.id).file_counts.completed == 1
    assert found(b, store.id, "QX-4417")
    # Nothing of it is in either server's own data directory: it is all in the bucket
    # and the database.
    for server in two_servers:
        data = server.data_dir  # type: ignore[attr-defined]
        assert not (data / "files.db").exists() and not (data / "vector_stores.db").exists()
        assert not (data / "lancedb").exists() and not (data / "files").exists()
    # Deleted on B: gone on A, from the Files API and from search.
    b.files.delete(f.id)
    with pytest.raises(openai.NotFoundError):
        a.files.retrieve(f.id)
    assert not found(a, store.id, "QX-4417")
    # A store deleted on A is gone on B.
    a.vector_stores.delete(store.id)
    with pytest.raises(openai.NotFoundError):
        b.vector_stores.retrieve(store.id)


def test_both_processes_ingest_into_one_store_at_once(
    two_servers: tuple[RunningServer, RunningServer],
) -> None:
    """Files attached through both servers at the same time, to one store: every file is
    ingested exactly by one of them, and each is found from either."""
    clients = [s.client() for s in two_servers]
    store = clients[0].vector_stores.create(name="both")
    markers = [f"ZK-{1000 + i}" for i in range(8)]
    errors: list[BaseException] = []

    def attach(i: int) -> None:
        try:
            client = clients[i % 2]
            f = client.files.create(
                file=(f"m{i}.md", io.BytesIO(manual(markers[i]))), purpose="assistants"
            )
            client.vector_stores.files.create(vector_store_id=store.id, file_id=f.id)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=attach, args=(i,)) for i in range(len(markers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    wait_for(lambda: clients[1].vector_stores.retrieve(store.id).file_counts.completed == 8)
    counts = clients[0].vector_stores.retrieve(store.id).file_counts
    assert counts.failed == 0 and counts.in_progress == 0 and counts.total == 8
    files = clients[0].vector_stores.files.list(vector_store_id=store.id, limit=20).data
    assert all(f.status == COMPLETED for f in files) and len(files) == 8
    for i, marker in enumerate(markers):
        assert found(clients[(i + 1) % 2], store.id, marker), marker
    # Each file was ingested once, by one of the two (a job is claimed by one process).
    logs = "".join(s.proc.log_text() for s in two_servers)
    for i in range(len(markers)):
        assert logs.count(f"ingested m{i}.md into {store.id}") == 1, logs[-3000:]


# --- the pgvector chunk backend ---------------------------------------------------------


@pytest.fixture(scope="module")
def pgvector_database() -> Iterator[str]:
    with postgres(pgvector=True) as url:
        yield url


def test_pgvector_store_writes_searches_and_reindexes(pgvector_database: str) -> None:
    """PgChunkStore directly: concurrent writers lose nothing, a re-ingestion that is
    shorter leaves no tail, each search mode ranks the right row first, and a table made
    for another embedding width asks to be indexed again."""
    stores = [PgChunkStore(pgvector_database, 4) for _ in range(2)]
    words = ["kettle boils water", "lighthouse beam sweeps", "router reset button", "E4417"]

    def upsert(i: int) -> None:
        chunks = [Chunk(j, f"{words[i % 4]} part {j}", 0, 9, None, None, "middle") for j in (0, 1)]
        vectors = np.repeat(np.eye(4, dtype=np.float32)[i % 4 : i % 4 + 1], 2, axis=0)
        stores[i % 2].upsert("vs_p", f"file-{i}", f"f{i}.txt", chunks, vectors, {"i": i})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(upsert, range(8)))
    assert stores[1].count("vs_p") == 16
    assert stores[0].pairs() == {("vs_p", f"file-{i}") for i in range(8)}
    stores[0].upsert(
        "vs_p",
        "file-0",
        "f0.txt",
        [Chunk(0, "kettle", 0, 6, None, None, "x")],
        np.eye(4, dtype=np.float32)[:1],
        {},
    )
    assert stores[0].count("vs_p", "file-0") == 1
    query = np.array([0, 1, 0, 0], dtype=np.float32)  # the lighthouse direction
    assert "lighthouse" in stores[1].search(["vs_p"], "", query, 3, "vector")[0].text
    assert (
        "router"
        in stores[1].search(["vs_p"], "how do I reset the router?", None, 3, "text")[0].text
    )
    hybrid = stores[1].search(["vs_p"], "what is E4417", query, 3, "hybrid")
    assert "E4417" in hybrid[0].text  # the exact code beats the closer vector
    assert stores[1].search(["vs_other"], "kettle", query, 3, "hybrid") == []
    stores[0].delete("vs_p", "file-1")
    assert ("vs_p", "file-1") not in stores[1].pairs()
    assert PgChunkStore(pgvector_database, 8).format_outdated  # another model's width
    for store in stores:
        store.close()


def test_unreachable_storage_is_one_clear_line(tmp_path: Path) -> None:
    """A database or bucket that cannot be reached stops `hearth serve` with one line that
    names it (without the password), not a traceback."""
    cases = {
        "database": 'database_url = "postgresql://hearth:sekrit@127.0.0.1:1/db"\n',
        "bucket": 'lancedb_uri = "s3://nobucket/x"\ns3_endpoint = "http://127.0.0.1:1"\n',
    }
    for name, body in cases.items():
        config = tmp_path / f"{name}.toml"
        config.write_text(f"[retrieval]\n{body}")
        out = hearth_cli("serve", "--config", str(config), "--data-dir", str(tmp_path / name))
        assert out.returncode == 1, out.stderr
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("hearth: cannot open") and "Traceback" not in out.stderr, last
        assert ("127.0.0.1:1" in last) and "sekrit" not in out.stderr
