"""Documents under faults (issue 12): what the user adds is indexed exactly once, what they
delete is gone, and nothing they do with a file can freeze the server.

Poison files and parser limits, deletes and re-attaches during ingestion, leftovers of a
crash, the watched folder, kill -9 at random moments (bench/chaos.py) and SIGTERM.
"""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import lancedb
import numpy as np
import openai
import pytest

from bench.chaos import run_chaos
from bench.shutdown import run_shutdown
from retrieval.chunk_store import ChunkStore
from retrieval.chunking import Chunk
from retrieval.files import new_file_id
from retrieval.ingestion import ChunkingOptions
from retrieval.parse_process import ParserCrashed, ParserProcess, ParseTimeout
from retrieval.parsing import ParseError, parse
from retrieval.service import RetrievalService
from retrieval.storage import Storage
from retrieval.watcher import ADDED, PENDING, FolderWatcher
from tests.conftest import RunningServer, start_server, stop_server

POISON_MD = ("# a" + " " * 50_000 + "b\n") * 3 + "\nThe poison file's body.\n"


def slow_markdown(path: Path) -> Path:
    """~20 MB of one-line sections: several seconds to parse and hand back."""
    path.write_text("# h\nline of text here\n" * 1_000_000)
    return path


def manual(marker: str, n: int = 400) -> bytes:
    paragraphs = [
        f"Paragraph {i} describes maintenance step {i} of the boiler in detail, including "
        f"the torque for bolt {i} and the order of the valves."
        for i in range(n)
    ]
    paragraphs.insert(n // 2, f"The inspection code of this manual is {marker}.")
    return "\n\n".join(paragraphs).encode()


def wait_for(predicate, timeout: float = 120.0, every: float = 0.1) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(every)


def lance_rows(data_dir: Path, file_id: str) -> list[dict]:
    table = lancedb.connect(str(data_dir / "lancedb")).open_table("chunks")
    return table.search().where(f"file_id = '{file_id}'").limit(100_000).to_list()


def attempts(data_dir: Path, file_id: str) -> int:
    with sqlite3.connect(data_dir / "vector_stores.db") as db:
        row = db.execute(
            "SELECT attempts FROM vector_store_files WHERE file_id = ?", (file_id,)
        ).fetchone()
    return row[0] if row else 0


# --- parsing -------------------------------------------------------------------------------


def test_poison_markdown_headings_parse_in_linear_time(tmp_path: Path) -> None:
    path = tmp_path / "poison.md"
    path.write_text(POISON_MD)
    started = time.monotonic()
    sections = parse(path, "poison.md")
    assert time.monotonic() - started < 1.0  # the old heading regex took minutes
    assert sections[0].heading == "a" + " " * 50_000 + "b"
    assert "body" in sections[-1].text


def test_parser_process_time_limit_crash_and_memory(tmp_path: Path) -> None:
    small = tmp_path / "small.txt"
    small.write_text("hello")
    slow = slow_markdown(tmp_path / "slow.md")
    parser = ParserProcess(timeout=0.5)
    try:
        with pytest.raises(ParseTimeout, match=r"longer than 0\.5 s"):
            parser.parse(slow, "slow.md")
        assert parser.parse(small, "small.txt")[0].text == "hello"  # a new child took over
    finally:
        parser.close()
    crashing = ParserProcess(timeout=30, module="tests.fixtures.crashing_parser")
    with pytest.raises(ParserCrashed, match="exit code 3"):
        crashing.parse(small, "small.txt")
    crashing.close()
    greedy = ParserProcess(timeout=60, memory_limit=200 << 20)
    try:
        with pytest.raises(ParseError, match="memory"):
            greedy.parse(slow, "slow.md")
    finally:
        greedy.close()


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("faults")
    config = tmp / "faults.toml"
    config.write_text("[retrieval]\nparse_timeout = 2.0\n")
    s = start_server(tmp, "--config", str(config), "--data-dir", str(tmp / "data"))
    s.data_dir = tmp / "data"  # type: ignore[attr-defined]
    yield s
    stop_server(s)


def upload(client: openai.OpenAI, name: str, data: bytes) -> str:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="assistants").id


def test_a_slow_file_fails_with_a_reason_while_the_server_answers(
    docs_server: RunningServer, tmp_path: Path
) -> None:
    client = docs_server.client()
    store = client.vector_stores.create(name="slow")
    slow = upload(client, "slow.md", slow_markdown(tmp_path / "slow.md").read_bytes())
    client.vector_stores.files.create(vector_store_id=store.id, file_id=slow)
    slowest = 0.0

    def settled() -> bool:
        nonlocal slowest
        t0 = time.monotonic()
        assert httpx.get(f"{docs_server.url}/health", timeout=10).status_code == 200
        slowest = max(slowest, time.monotonic() - t0)
        vsf = client.vector_stores.files.retrieve(file_id=slow, vector_store_id=store.id)
        return vsf.status != "in_progress"

    wait_for(settled)
    assert slowest < 1.0
    vsf = client.vector_stores.files.retrieve(file_id=slow, vector_store_id=store.id)
    assert vsf.status == "failed" and "longer than 2 s" in vsf.last_error.message
    # The old poison file is harmless now, and the next files are ingested as usual.
    for name, data in (("poison.md", POISON_MD.encode()), ("ok.txt", b"Plain words.")):
        done = client.vector_stores.files.create_and_poll(
            vector_store_id=store.id, file_id=upload(client, name, data), poll_interval_ms=100
        )
        assert done.status == "completed", (name, done.last_error)


def test_a_file_the_server_never_survives_is_given_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "attempts.toml"
    config.write_text("[retrieval]\nparse_timeout = 60.0\nmax_attempts = 2\n")
    args = ("--config", str(config), "--data-dir", str(data))
    server = start_server(tmp_path, *args)
    client = server.client()
    store = client.vector_stores.create(name="poison")
    file_id = upload(client, "slow.md", slow_markdown(tmp_path / "slow.md").read_bytes())
    client.vector_stores.files.create(vector_store_id=store.id, file_id=file_id)
    for attempt in (1, 2):  # each start of the job is counted before the work
        wait_for(lambda a=attempt: attempts(data, file_id) == a)
        server.proc.process.kill()
        server.proc.process.wait()
        server = start_server(tmp_path, *args)
    try:
        done = server.client().vector_stores.files.poll(
            file_id=file_id, vector_store_id=store.id, poll_interval_ms=100
        )
        assert done.status == "failed"
        assert "gave up after 2 attempts" in done.last_error.message
    finally:
        stop_server(server)


# --- deletes and re-attaches while a file is ingested --------------------------------------


@pytest.mark.parametrize("delay", [0.3, 1.5])
@pytest.mark.parametrize("action", ["delete", "detach"])
def test_removed_during_ingestion_never_comes_back(
    docs_server: RunningServer, action: str, delay: float
) -> None:
    client = docs_server.client()
    store = client.vector_stores.create(name=f"{action}-{delay}")
    marker = f"gone{action}{int(delay * 10)}"
    file_id = upload(client, "manual.txt", manual(marker))
    client.vector_stores.files.create(vector_store_id=store.id, file_id=file_id)
    time.sleep(delay)
    if action == "delete":
        client.files.delete(file_id)
    else:
        client.vector_stores.files.delete(file_id=file_id, vector_store_id=store.id)
    # The worker takes jobs in order: once a later one is done, this one is too.
    sentinel = client.vector_stores.files.create_and_poll(
        vector_store_id=store.id,
        file_id=upload(client, "s.txt", b"A sentinel sentence."),
        poll_interval_ms=100,
    )
    assert sentinel.status == "completed"
    hits = client.vector_stores.search(store.id, query=marker, max_num_results=20).data
    assert file_id not in [h.file_id for h in hits]
    assert lance_rows(docs_server.data_dir, file_id) == []  # type: ignore[attr-defined]


def test_reattaching_while_ingesting_keeps_the_new_attach(docs_server: RunningServer) -> None:
    client = docs_server.client()
    store = client.vector_stores.create(name="reattach")
    file_id = upload(client, "manual.txt", manual("reattachmarker"))
    client.vector_stores.files.create(
        vector_store_id=store.id, file_id=file_id, attributes={"round": "1"}
    )
    time.sleep(0.5)
    client.vector_stores.files.create(
        vector_store_id=store.id, file_id=file_id, attributes={"round": "2"}
    )
    done = client.vector_stores.files.poll(
        file_id=file_id, vector_store_id=store.id, poll_interval_ms=100
    )
    assert done.status == "completed" and done.attributes == {"round": "2"}
    rows = lance_rows(docs_server.data_dir, file_id)  # type: ignore[attr-defined]
    assert sorted(r["chunk_index"] for r in rows) == list(range(done.model_extra["chunk_count"]))
    assert {json.loads(r["attributes"])["round"] for r in rows} == {"2"}


def test_leftover_chunks_are_never_found_and_go_at_start(tmp_path: Path) -> None:
    """What a kill -9 between a detach and its LanceDB delete leaves behind."""
    data = tmp_path / "data"
    server = start_server(tmp_path, "--data-dir", str(data))
    client = server.client()
    store = client.vector_stores.create(name="ghosts")
    real = client.vector_stores.files.create_and_poll(
        vector_store_id=store.id,
        file_id=upload(client, "real.txt", b"The real file mentions lanterns."),
        poll_interval_ms=100,
    )
    table = lancedb.connect(str(data / "lancedb")).open_table("chunks")
    ghost = dict(lance_rows(data, real.id)[0])
    ghost.update(
        id=f"{store.id}/file-ghost/0", file_id="file-ghost", text="A ghostly wraith appears."
    )
    ghost.pop("_distance", None)
    table.add([ghost])
    try:
        hits = client.vector_stores.search(store.id, query="ghostly wraith").data
        assert "file-ghost" not in [h.file_id for h in hits]  # not attached: never shown
        assert hits and hits[0].file_id == real.id
    finally:
        stop_server(server)
    server = start_server(tmp_path, "--data-dir", str(data))
    try:
        wait_for(lambda: lance_rows(data, "file-ghost") == [], timeout=30)
        assert len(lance_rows(data, real.id)) == 1
    finally:
        stop_server(server)


def test_compaction_drops_old_table_versions(tmp_path: Path) -> None:
    store = ChunkStore(str(tmp_path), dim=4)
    chunk = Chunk(0, "text", 0, 4, None, None, "beginning")
    for i in range(10):
        store.upsert("vs", f"file-{i}", "f.txt", [chunk], np.ones((1, 4), np.float32), {})
    table = lancedb.connect(str(tmp_path)).open_table("chunks")
    assert len(table.list_versions()) >= 10 and store.compaction_due
    time.sleep(0.05)
    store.compact(keep=timedelta(milliseconds=10))
    assert not store.compaction_due
    table = lancedb.connect(str(tmp_path)).open_table("chunks")
    assert len(table.list_versions()) <= 2
    assert store.count("vs") == 10


# --- the watched folder --------------------------------------------------------------------


def test_watched_folder_skips_links_and_bad_files(tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    (outside / "id_rsa").write_text("PRIVATE KEY of the user: secretkeymarker")
    (inbox / "key-link.txt").symlink_to(outside / "id_rsa")
    (inbox / "big.txt").write_bytes(b"x" * (2 << 20))  # over the 1 MiB upload limit
    (inbox / "a.txt").write_text("The lighthouse keeper feeds the gulls at dawn.")
    (inbox / "b.txt").write_text("The ferry leaves at noon.")
    config = tmp_path / "watch.toml"
    config.write_text(
        f'[retrieval]\nwatch_dir = "{inbox}"\nwatch_store = "inbox"\nwatch_interval = 0.2\n'
        "max_upload_mb = 1\n"
    )
    server = start_server(tmp_path, "--config", str(config), "--data-dir", str(tmp_path / "d"))
    client = server.client()

    def names() -> set[str]:
        return {f.filename for f in client.files.list()}

    try:
        wait_for(lambda: {"a.txt", "b.txt"} <= names(), timeout=30)
        (inbox / "b.txt").unlink()  # the scan gets past the bad files to the deletion
        wait_for(lambda: "b.txt" not in names(), timeout=30)
        assert names() == {"a.txt"}  # neither the link nor the oversized file
        store = next(s for s in client.vector_stores.list() if s.name == "inbox")
        hits = client.vector_stores.search(store.id, query="secretkeymarker private key").data
        assert all("secretkeymarker" not in h.content[0].text for h in hits)
    finally:
        stop_server(server)


def test_links_inside_the_folder_may_be_followed(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    (inbox / "sub" / "real.txt").write_text("inside")
    (inbox / "inside-link.txt").symlink_to(inbox / "sub" / "real.txt")
    (tmp_path / "secret.txt").write_text("outside")
    (inbox / "outside-link.txt").symlink_to(tmp_path / "secret.txt")
    (inbox / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    retrieval = RetrievalService(Storage(tmp_path / "data"), 1 << 20, None, ChunkingOptions())
    try:
        skip = FolderWatcher(retrieval, inbox, "w", 1, tmp_path / "data", symlinks="skip")
        assert set(skip.files_in_folder()) == {str(inbox / "sub" / "real.txt")}
        inside = FolderWatcher(retrieval, inbox, "w", 1, tmp_path / "data2", symlinks="inside")
        assert set(inside.files_in_folder()) == {
            str(inbox / "sub" / "real.txt"),
            str(inbox / "inside-link.txt"),
        }
    finally:
        retrieval.files.close()
        retrieval.catalog.close()


def test_a_crash_while_adding_a_watched_file_does_not_duplicate_it(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    doc = inbox / "a.txt"
    doc.write_text("words")
    data = tmp_path / "data"
    retrieval = RetrievalService(Storage(data), 1 << 20, None, ChunkingOptions())
    watcher = FolderWatcher(retrieval, inbox, "w", 1, data)
    try:
        # What a kill -9 after storing the file, before recording it, leaves behind.
        stat = doc.stat()
        orphan = new_file_id()
        watcher._record(str(doc), stat.st_size, stat.st_mtime_ns, orphan, PENDING)
        with doc.open("rb") as f:
            retrieval.files.add(f, "a.txt", "assistants", file_id=orphan)
        watcher.scan()
        stored = retrieval.files.list()
        assert len(stored) == 1 and stored[0].id != orphan
        with watcher._db.tx() as db:
            rows = db.execute("SELECT file_id, state FROM watched").fetchall()
        assert rows == [(stored[0].id, ADDED)]
        watcher.scan()  # nothing changed: nothing happens
        assert len(retrieval.files.list()) == 1
    finally:
        watcher.close()
        retrieval.files.close()
        retrieval.catalog.close()


# --- kill -9 and SIGTERM -------------------------------------------------------------------


def test_documents_survive_kill_9_at_random_moments(tmp_path: Path) -> None:
    report = run_chaos(tmp_path, kills=3, seed=2, n_docs=9)
    assert report.lost == [] and report.duplicated == [] and report.orphaned == []
    assert report.not_found == []
    assert all(report.failed.values()), report.failed  # a failure always says why
    assert report.completed + len(report.failed) + report.removed == report.files
    assert report.completed >= 4


def test_sigterm_ends_every_stream_properly_and_saves_the_cache(tmp_path: Path) -> None:
    report = run_shutdown(tmp_path, drain_seconds=2.0, long_streams=7, short_streams=1)
    assert report.ended_with_done == 8, [lines[-2:] for lines in report.streams]
    assert report.ended_with_error == 7  # the long ones, ended by the drain
    assert '"finish_reason":"length"' in report.streams[7][-2]  # the short one finished
    # uvicorn re-raises the signal once it has shut down cleanly: "killed by SIGTERM".
    assert report.exit_code in (0, -signal.SIGTERM) and report.exit_seconds < 2.0 + 8
    assert report.cache_files and all(mode == 0o600 for _, mode in report.cache_files)
    assert report.cached_tokens_after_restart > 300  # restored from disk
