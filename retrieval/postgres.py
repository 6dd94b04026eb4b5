"""The catalog on PostgreSQL, for several Hearth processes sharing one set of files and
vector stores (issue 20). Same interface as retrieval/sqlite.py's Database: `tx()` yields
something with `execute(sql, params)` taking SQLite's `?` placeholders, so the catalog's
statements are written once.

Work on a job is claimed with a session-level advisory lock on a connection of its own:
if the process dies, PostgreSQL drops the connection and the lock with it, so another
process resumes the job at once; no lease to time out.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

# Taken (transaction-scoped) while a schema is created: CREATE TABLE IF NOT EXISTS races
# between processes starting together.
_SCHEMA_LOCK = 7_201_120


class _Cursor:
    """What the catalog's statements read back from a psycopg cursor."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cursor.fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cursor.fetchall()

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._cursor.fetchall())


class _Connection:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        # psycopg's placeholder is %s; a literal % must be doubled.
        return _Cursor(self._conn.execute(sql.replace("%", "%%").replace("?", "%s"), params))


class PostgresDatabase:
    dialect = "postgres"
    shared = True  # other processes may use it: the point of it
    # Tables here carry an `ord BIGSERIAL` column: PostgreSQL has no row id.
    insertion_order = "ord"

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._conn = self._connect()
        self._claims = self._connect()
        self._claims_lock = threading.Lock()
        with self.tx() as db:
            db.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
            for statement in filter(str.strip, schema.split(";")):
                db.execute(statement)

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.url, autocommit=True)

    @contextmanager
    def tx(self) -> Iterator[_Connection]:
        """Commits on success, rolls back on error. A connection that broke (the server
        restarted) is opened again for the next transaction."""
        with self._lock:
            if self._conn.closed or self._conn.broken:
                self._conn = self._connect()
            with self._conn.transaction():
                yield _Connection(self._conn)

    @contextmanager
    def claim(self, key: str) -> Iterator[bool]:
        """Whether this process got `key` to itself (no other process holds it); held
        until the block ends or this process dies."""
        lock = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), signed=True)
        with self._claims_lock:
            if self._claims.closed or self._claims.broken:
                self._claims = self._connect()
            row = self._claims.execute("SELECT pg_try_advisory_lock(%s)", (lock,)).fetchone()
            got = bool(row[0])
        try:
            yield got
        finally:
            if got:
                with self._claims_lock:
                    if not (self._claims.closed or self._claims.broken):
                        self._claims.execute("SELECT pg_advisory_unlock(%s)", (lock,))

    def columns(self, table: str) -> set[str]:
        with self.tx() as db:
            rows = db.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                (table,),
            ).fetchall()
        return {r[0] for r in rows}

    def close(self) -> None:
        self._conn.close()
        self._claims.close()
