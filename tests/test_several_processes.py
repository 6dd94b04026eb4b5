"""One machine's data directory used by several Hearth processes at once
(`storage.several_processes`, which `hearth serve --ray` sets for its replicas): the SQLite
catalog hands a queued job to one process at a time, and a process that dies drops its
claim. Real SQLite files and real processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from retrieval.catalog import Catalog
from server.launch import ROOT


def check_one_claim_at_a_time(open_catalog: Callable[[], Catalog]) -> tuple[Catalog, Catalog]:
    """Two catalogs on one database, as two processes would have them: a queued job is
    handed to one of them at a time, and released when its holder is done. Returns the
    two, file-b still queued (the PostgreSQL test goes on with them)."""
    first, second = open_catalog(), open_catalog()
    store = first.create_store("claims", {})
    first.add_file(store.id, "file-a", {})
    second.add_file(store.id, "file-b", {})
    with first.next_job() as a:
        assert a is not None and a.file_id == "file-a"
        with second.next_job() as b:
            assert b is not None and b.file_id == "file-b"  # not file-a: claimed
            with open_catalog().next_job() as c:
                assert c is None  # both claimed
    first.finish_job(a, 1)
    with second.next_job() as again:
        assert again is not None and again.file_id == "file-b"  # released, still queued
    return first, second


def test_a_queued_job_is_claimed_by_one_catalog_at_a_time(tmp_path: Path) -> None:
    for catalog in check_one_claim_at_a_time(lambda: Catalog(tmp_path, True)):
        catalog.close()


def test_a_process_that_dies_drops_its_claim(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path, True)
    store = catalog.create_store("claims", {})
    catalog.add_file(store.id, "file-a", {})
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import time
                from pathlib import Path
                from retrieval.catalog import Catalog
                with Catalog(Path({str(tmp_path)!r}), True).next_job() as job:
                    print(job.file_id, flush=True)
                    time.sleep(600)
            """),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "file-a"
        with catalog.next_job() as job:
            assert job is None  # the other process has it
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with catalog.next_job() as job:
            if job is not None:
                assert job.file_id == "file-a"
                break
        time.sleep(0.1)
    else:
        raise AssertionError("the dead process's claim was never dropped")
    catalog.close()


def test_a_catalog_of_one_process_needs_no_claims(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    store = catalog.create_store("alone", {})
    catalog.add_file(store.id, "file-a", {})
    with catalog.next_job() as a, Catalog(tmp_path).next_job() as b:
        assert a is not None and b is not None  # no locks taken: it is the only process
    assert not (tmp_path / "vector_stores.db.claims").exists()
    catalog.close()
