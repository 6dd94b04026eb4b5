"""A SQLite database shared by the event loop and worker threads: one connection, one lock,
every use a transaction. The local choice for the catalog (retrieval/postgres.py is the
shared one, with the same interface)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Database:
    dialect = "sqlite"
    # What orders rows by insertion (ties of created_at): SQLite's own row id.
    insertion_order = "rowid"

    def __init__(self, path: Path, schema: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False)
        self._conn.executescript(schema)
        self._lock = threading.Lock()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """Commits on success, rolls back on error."""
        with self._lock, self._conn:
            yield self._conn

    @contextmanager
    def claim(self, key: str) -> Iterator[bool]:
        """Whether this process may work on `key` (always: a SQLite catalog has one
        process; see PostgresDatabase.claim)."""
        yield True

    def columns(self, table: str) -> set[str]:
        with self.tx() as db:
            return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        self._conn.close()
