"""A SQLite database shared by the event loop and worker threads: one connection, one lock,
every use a transaction. The local choice for the catalog (retrieval/postgres.py is the
shared one, with the same interface). Several processes of one machine may share it
(`several_processes`: `hearth serve --ray`'s replicas): SQLite serialises their writes and
file locks stand in for PostgreSQL's advisory locks."""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Database:
    dialect = "sqlite"
    # What orders rows by insertion (ties of created_at): SQLite's own row id.
    insertion_order = "rowid"

    def __init__(self, path: Path, schema: str, several_processes: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Another process may hold the write lock for a moment: wait for it, not fail.
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._conn.executescript(schema)
        self._lock = threading.Lock()
        self.shared = several_processes
        self._claims_dir = path.with_name(path.name + ".claims")

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """Commits on success, rolls back on error."""
        with self._lock, self._conn:
            yield self._conn

    @contextmanager
    def claim(self, key: str) -> Iterator[bool]:
        """Whether this process got `key` to itself: always, when the database is this
        process's alone; else an exclusive lock on a file named after the key, which the
        kernel drops when the block ends or the process dies (as PostgresDatabase.claim)."""
        if not self.shared:
            yield True
            return
        self._claims_dir.mkdir(exist_ok=True)
        name = hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
        fd = os.open(self._claims_dir / name, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing the descriptor releases its lock

    def columns(self, table: str) -> set[str]:
        with self.tx() as db:
            return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        self._conn.close()
