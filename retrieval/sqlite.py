"""A SQLite database shared by the event loop and worker threads: one connection, one lock,
every use a transaction."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Database:
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

    def close(self) -> None:
        self._conn.close()
