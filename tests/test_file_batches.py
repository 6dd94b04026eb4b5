"""Vector store file batches in the catalog: cancelling a batch stops its files that are not
ingested yet, a job already under way then records nothing, and files done before stay.
Real SQLite here; the same check on PostgreSQL runs in test_shared_storage.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from retrieval.catalog import CANCELLED, COMPLETED, IN_PROGRESS, Catalog


def check_cancelling_a_batch(catalog: Catalog) -> None:
    while True:  # jobs earlier tests left queued on a shared database go first
        with catalog.next_job() as left:
            if left is None:
                break
            catalog.finish_job(left, 0)
    store = catalog.create_store("batches", {})
    attached = [catalog.add_file(store.id, f"file-{i}", {}) for i in range(3)]
    batch = catalog.create_batch(store.id, attached)
    assert batch.status == IN_PROGRESS and batch.file_counts["total"] == 3
    with catalog.next_job() as first:
        assert first is not None and first.file_id == "file-0"
        assert catalog.finish_job(first, 4)  # done before the cancel: stays done
    with catalog.next_job() as running:
        assert running is not None and running.file_id == "file-1"
        assert sorted(catalog.cancel_batch(store.id, batch.id) or []) == ["file-1", "file-2"]
        cancelled = catalog.get_batch(store.id, batch.id)
        assert cancelled is not None and cancelled.status == CANCELLED
        assert cancelled.file_counts == {
            IN_PROGRESS: 0,
            COMPLETED: 1,
            "failed": 0,
            CANCELLED: 2,
            "total": 3,
        }
        # The job under way when it was cancelled writes nothing and records nothing.
        assert not catalog.is_current(running)
        assert not catalog.finish_job(running, 7)
    with catalog.next_job() as nothing:
        assert nothing is None  # file-2 is not ingested either
    statuses = {f.file_id: f.status for f in catalog.batch_files(batch.id)}
    assert statuses == {"file-0": COMPLETED, "file-1": CANCELLED, "file-2": CANCELLED}
    assert [f.file_id for f in catalog.batch_files(batch.id, CANCELLED, "asc")] == [
        "file-1",
        "file-2",
    ]
    # Attached again, a file is the new attach's, not the old batch's.
    catalog.add_file(store.id, "file-1", {})
    after = catalog.get_batch(store.id, batch.id)
    assert after is not None and after.file_counts["total"] == 2
    assert catalog.get_batch("vs_other", batch.id) is None  # a batch belongs to its store
    assert catalog.cancel_batch("vs_other", batch.id) is None
    assert catalog.delete_store(store.id)
    assert catalog.get_batch(store.id, batch.id) is None


def test_cancelling_a_batch_on_sqlite(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    try:
        check_cancelling_a_batch(catalog)
    finally:
        catalog.close()


def test_an_attach_keeps_its_chunk_sizes_and_old_catalogs_gain_the_column(
    tmp_path: Path,
) -> None:
    with sqlite3.connect(tmp_path / "vector_stores.db") as db:  # as made before the column
        db.execute(
            "CREATE TABLE vector_store_files (vector_store_id TEXT NOT NULL, file_id TEXT NOT "
            "NULL, status TEXT NOT NULL, last_error TEXT, attributes TEXT NOT NULL DEFAULT "
            "'{}', created_at INTEGER NOT NULL, chunks INTEGER NOT NULL DEFAULT 0, seq INTEGER "
            "NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (vector_store_id, "
            "file_id))"
        )
        db.execute(
            "INSERT INTO vector_store_files VALUES ('vs_1', 'f0', ?, NULL, '{}', 1, 3, 1, 0)",
            (COMPLETED,),
        )
    catalog = Catalog(tmp_path)
    old = catalog.get_file("vs_1", "f0")
    assert old is not None and old.chunking is None and old.chunks == 3
    store = catalog.create_store("sizes", {})
    assert catalog.add_file(store.id, "f1", {}, (800, 400)).chunking == (800, 400)
    with catalog.next_job() as job:
        assert job is not None and job.chunking == (800, 400)  # what the worker chunks by
    assert catalog.add_file(store.id, "f1", {}).chunking is None  # a new attach: its own
