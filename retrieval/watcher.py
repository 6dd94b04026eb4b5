"""A watched folder: files that appear or change in it are ingested into a named vector
store; files that disappear leave it. Polls (portable, no inotify dependency); what it has
seen is kept in SQLite, so a restart does not ingest everything again."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from retrieval.service import Retrieval
from retrieval.sqlite import Database

logger = logging.getLogger("hearth.watcher")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS watched (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    file_id TEXT NOT NULL
);
"""


class FolderWatcher:
    def __init__(
        self, retrieval: Retrieval, folder: Path, store_name: str, interval: float, data_dir: Path
    ) -> None:
        self.retrieval = retrieval
        self.folder = folder
        self.store_name = store_name
        self.interval = interval
        self._db = Database(data_dir / "watched.db", _SCHEMA)

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.scan)
            except Exception:
                logger.exception("scanning %s failed", self.folder)
            await asyncio.sleep(self.interval)

    def _store_id(self) -> str:
        for store in self.retrieval.catalog.list_stores():
            if store.name == self.store_name:
                return store.id
        return self.retrieval.catalog.create_store(
            self.store_name, {"watch_dir": str(self.folder)}
        ).id

    def scan(self) -> None:
        """One pass: ingest new and changed files, drop vanished ones."""
        current = {}
        if self.folder.is_dir():
            for path in self.folder.rglob("*"):
                if path.is_file() and not any(p.startswith(".") for p in path.parts):
                    stat = path.stat()
                    current[str(path)] = (stat.st_size, stat.st_mtime_ns)
        with self._db.tx() as db:
            known = {row[0]: row[1:] for row in db.execute("SELECT * FROM watched")}
        if current == {k: v[:2] for k, v in known.items()}:
            return
        store_id = self._store_id()
        for path, (size, mtime) in current.items():
            seen = known.get(path)
            if seen is not None and seen[:2] == (size, mtime):
                continue
            if seen is not None:
                self.retrieval.delete_file(seen[2])
            with open(path, "rb") as f:
                stored = self.retrieval.files.add(f, Path(path).name, "assistants")
            self.retrieval.attach(store_id, stored.id, {"path": path})
            with self._db.tx() as db:
                db.execute(
                    "INSERT OR REPLACE INTO watched VALUES (?, ?, ?, ?)",
                    (path, size, mtime, stored.id),
                )
            logger.info("watched folder: ingesting %s", path)
        for path, (_, _, file_id) in known.items():
            if path not in current:
                self.retrieval.delete_file(file_id)
                with self._db.tx() as db:
                    db.execute("DELETE FROM watched WHERE path = ?", (path,))
                logger.info("watched folder: %s is gone; removed from the store", path)

    def close(self) -> None:
        self._db.close()
