"""Vector store file batches in the catalog: cancelling a batch stops its files that are not
ingested yet, a job already under way then records nothing, and files done before stay.
Real SQLite here; the same check on PostgreSQL runs in test_shared_storage.py."""

from __future__ import annotations

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
