"""A watched folder: files that appear or change in it are ingested into a named vector
store; files that disappear leave it. Polls (portable, no inotify dependency); what it has
seen is kept in SQLite, so a restart does not ingest everything again.

- Symbolic links are skipped (a link planted in the folder could point at ~/.ssh and make
  it downloadable), or, with `retrieval.watch_symlinks = "inside"`, followed only when
  they lead to a file inside the folder.
- One file that cannot be read, or is over the upload limit, is recorded as skipped (and
  retried when it changes); the scan goes on with the others, deletions included.
- Adding is idempotent: the row is written as `pending` with the new file's id before the
  file is stored, and marked `added` after it is attached; a pending row that a crash
  left behind is undone and its file added again, so a crash never duplicates a file.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Literal

from retrieval.files import new_file_id
from retrieval.service import RetrievalService
from retrieval.sqlite import Database

logger = logging.getLogger("hearth.watcher")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS watched (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    file_id TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'added'
);
"""
PENDING, ADDED, SKIPPED = "pending", "added", "skipped"
SymlinkPolicy = Literal["skip", "inside"]


class FolderWatcher:
    def __init__(
        self,
        retrieval: RetrievalService,
        folder: Path,
        store_name: str,
        interval: float,
        data_dir: Path,
        symlinks: SymlinkPolicy = "skip",
    ) -> None:
        self.retrieval = retrieval
        self.folder = folder
        self.store_name = store_name
        self.interval = interval
        self.symlinks = symlinks
        self._db = Database(data_dir / "watched.db", _SCHEMA)
        with self._db.tx() as db:
            columns = {row[1] for row in db.execute("PRAGMA table_info(watched)")}
            if "state" not in columns:
                db.execute(f"ALTER TABLE watched ADD COLUMN state TEXT NOT NULL DEFAULT '{ADDED}'")
        self._scanning: asyncio.Future[None] | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Remembered, so that stop() can wait for a scan thread a cancel did not stop.
            self._scanning = loop.run_in_executor(None, self._scan_logged)
            await self._scanning
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._scanning is not None and not self._scanning.done():
            await asyncio.wait({self._scanning}, timeout=30)

    def _scan_logged(self) -> None:
        try:
            self.scan()
        except Exception:
            logger.exception("scanning %s failed", self.folder)

    def _store_id(self) -> str:
        for store in self.retrieval.catalog.list_stores():
            if store.name == self.store_name:
                return store.id
        return self.retrieval.catalog.create_store(
            self.store_name, {"watch_dir": str(self.folder)}
        ).id

    def files_in_folder(self) -> dict[str, tuple[int, int]]:
        """path -> (size, mtime_ns) of every regular file the folder holds, hidden ones and
        symbolic links (unless followed inside the folder) left out."""
        found: dict[str, tuple[int, int]] = {}
        if not self.folder.is_dir():
            return found
        root = self.folder.resolve()
        # os.walk does not descend into linked directories (followlinks=False).
        for directory, subdirs, names in os.walk(self.folder):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            for name in names:
                path = Path(directory) / name
                if name.startswith("."):
                    continue
                try:
                    if path.is_symlink():
                        target = path.resolve()
                        if self.symlinks != "inside" or not target.is_relative_to(root):
                            continue
                    if not path.is_file():
                        continue
                    stat = path.stat()
                except OSError:
                    continue  # gone since the listing, or a broken link
                found[str(path)] = (stat.st_size, stat.st_mtime_ns)
        return found

    def scan(self) -> None:
        """One pass: ingest new and changed files, drop vanished ones."""
        current = self.files_in_folder()
        with self._db.tx() as db:
            known = {row[0]: row[1:] for row in db.execute("SELECT * FROM watched")}
        for path, (_, _, file_id, state) in list(known.items()):
            if state == PENDING:  # a crash in the middle of adding it: undo, then redo
                self._forget(path, file_id)
                del known[path]
        if current == {k: (v[0], v[1]) for k, v in known.items()}:
            return
        store_id = self._store_id()
        for path, (size, mtime) in current.items():
            seen = known.get(path)
            if seen is not None and (seen[0], seen[1]) == (size, mtime):
                continue
            if seen is not None:
                self._forget(path, seen[2])
            try:
                self._add(path, size, mtime, store_id)
            except Exception as e:  # this file only; the scan goes on
                logger.warning("watched folder: skipping %s: %s", path, e)
                self._record(path, size, mtime, "", SKIPPED)
        for path, (_, _, file_id, _) in known.items():
            if path not in current:
                self._forget(path, file_id)
                logger.info("watched folder: %s is gone; removed from the store", path)

    def _add(self, path: str, size: int, mtime: int, store_id: str) -> None:
        file_id = new_file_id()
        self._record(path, size, mtime, file_id, PENDING)
        try:
            with open(path, "rb") as f:
                self.retrieval.files.add(f, Path(path).name, "assistants", file_id=file_id)
            self.retrieval.attach(store_id, file_id, {"path": path})
        except BaseException:
            self.retrieval.delete_file(file_id)
            raise
        self._record(path, size, mtime, file_id, ADDED)
        logger.info("watched folder: ingesting %s", path)

    def _forget(self, path: str, file_id: str) -> None:
        if file_id:
            self.retrieval.delete_file(file_id)
        with self._db.tx() as db:
            db.execute("DELETE FROM watched WHERE path = ?", (path,))

    def _record(self, path: str, size: int, mtime: int, file_id: str, state: str) -> None:
        with self._db.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO watched VALUES (?, ?, ?, ?, ?)",
                (path, size, mtime, file_id, state),
            )

    def close(self) -> None:
        self._db.close()
