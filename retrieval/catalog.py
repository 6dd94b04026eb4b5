"""Vector stores and the files attached to them, in SQLite beside the uploaded files.

A vector-store file whose status is `in_progress` is also the ingestion worker's job: the
queue is this table, so it survives a crash or kill -9 and the worker resumes it on start.
A job is identified by its `seq`, new on every attach: a job whose row was detached or
re-attached meanwhile is no longer current, and nothing it does counts. `attempts`
counts the starts of the current job, so a file that keeps killing the server is given up.

The database is SQLite in the data directory, or PostgreSQL (`retrieval.database_url`)
when several Hearth processes share the catalog: there a job is claimed by one process at
a time (PostgresDatabase.claim), and `seq` comes from a sequence, not MAX + 1.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from retrieval.postgres import PostgresDatabase
from retrieval.sqlite import Database
from server.ids import new_id

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vector_stores (
    id TEXT PRIMARY KEY,
    name TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    last_active_at INTEGER NOT NULL,
    expires_after_days INTEGER
);
CREATE TABLE IF NOT EXISTS vector_store_files (
    vector_store_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    status TEXT NOT NULL,
    last_error TEXT,
    attributes TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    chunks INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    chunking TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (vector_store_id, file_id)
);
CREATE TABLE IF NOT EXISTS vector_store_file_batches (
    id TEXT PRIMARY KEY,
    vector_store_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS vector_store_file_batch_files (
    batch_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (batch_id, file_id)
);
"""
_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS vector_stores (
    id TEXT PRIMARY KEY,
    name TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    last_active_at BIGINT NOT NULL,
    ord BIGSERIAL
);
ALTER TABLE vector_stores ADD COLUMN IF NOT EXISTS expires_after_days BIGINT;
CREATE TABLE IF NOT EXISTS vector_store_files (
    vector_store_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    status TEXT NOT NULL,
    last_error TEXT,
    attributes TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    chunks INTEGER NOT NULL DEFAULT 0,
    seq BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    chunking TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (vector_store_id, file_id)
);
ALTER TABLE vector_store_files ADD COLUMN IF NOT EXISTS chunking TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS vector_store_files_status ON vector_store_files (status, seq);
CREATE SEQUENCE IF NOT EXISTS vector_store_files_seq;
CREATE TABLE IF NOT EXISTS vector_store_file_batches (
    id TEXT PRIMARY KEY,
    vector_store_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS vector_store_file_batch_files (
    batch_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (batch_id, file_id)
)
"""
# Columns added since the first release, for databases made before them.
_MIGRATIONS = {
    "attempts": "ALTER TABLE vector_store_files ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
    "chunking": "ALTER TABLE vector_store_files ADD COLUMN chunking TEXT NOT NULL DEFAULT ''",
    "vector_stores.expires_after_days": (
        "ALTER TABLE vector_stores ADD COLUMN expires_after_days INTEGER"
    ),
}
# The row of one job: its file, in its store, by the same attach.
_JOB = "vector_store_id = ? AND file_id = ? AND seq = ?"
_FILE_COLUMNS = (
    "vector_store_id, file_id, status, last_error, attributes, created_at, chunks, seq, chunking"
)
_F_COLUMNS = ", ".join(f"f.{c.strip()}" for c in _FILE_COLUMNS.split(","))  # table as `f`
_STORE_COLUMNS = "id, name, metadata, created_at, last_active_at, expires_after_days"
# A batch's files: the store's rows of the attaches the batch made (one `?`: the batch).
_BATCH_JOIN = (
    "FROM vector_store_file_batch_files b JOIN vector_store_file_batches s ON s.id = b.batch_id "
    "JOIN vector_store_files f ON f.vector_store_id = s.vector_store_id "
    "AND f.file_id = b.file_id AND f.seq = b.seq WHERE b.batch_id = ?"
)
# Jobs a worker looks at for one it can claim (others may be claimed by other processes).
_CLAIM_CANDIDATES = 16

IN_PROGRESS, COMPLETED, FAILED, CANCELLED = "in_progress", "completed", "failed", "cancelled"


@dataclass(frozen=True)
class VectorStore:
    id: str
    name: str | None
    metadata: dict[str, Any]
    created_at: int
    last_active_at: int
    file_counts: dict[str, int] = field(default_factory=dict)
    expires_after_days: int | None = None  # after so many days without use, it expires

    @property
    def expires_at(self) -> int | None:
        if self.expires_after_days is None:
            return None
        return self.last_active_at + self.expires_after_days * 86400

    def expired(self, now: float | None = None) -> bool:
        moment = time.time() if now is None else now
        return self.expires_at is not None and moment >= self.expires_at


@dataclass(frozen=True)
class VectorStoreFile:
    vector_store_id: str
    file_id: str
    status: str
    last_error: dict[str, str] | None
    attributes: dict[str, Any]
    created_at: int
    chunks: int
    seq: int = 0  # which attach this is: the ingestion job's identity
    # The attach's chunk size and overlap in tokens (OpenAI's static chunking strategy);
    # None: the server's (retrieval.chunk_tokens, retrieval.chunk_overlap).
    chunking: tuple[int, int] | None = None


@dataclass(frozen=True)
class FileBatch:
    """Files attached together (OpenAI's vector store file batch): their state is the
    state of those attaches in the store now; a file detached since no longer counts."""

    id: str
    vector_store_id: str
    created_at: int
    cancelled: bool
    file_counts: dict[str, int]

    @property
    def status(self) -> str:
        counts = self.file_counts
        if counts[IN_PROGRESS]:
            return IN_PROGRESS
        if self.cancelled and counts[CANCELLED]:  # (a cancel after the end changed nothing)
            return CANCELLED
        if counts["total"] and counts[FAILED] == counts["total"]:
            return FAILED
        return COMPLETED


def _counts(by_status: dict[str, int]) -> dict[str, int]:
    """OpenAI's file_counts from (status -> files): every status, and the total."""
    counts = {s: by_status.get(s, 0) for s in (IN_PROGRESS, COMPLETED, FAILED, CANCELLED)}
    counts["total"] = sum(counts.values())
    return counts


def _chunking(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    size, overlap = json.loads(text)
    return int(size), int(overlap)


def _job_key(job: VectorStoreFile) -> tuple[str, str, int]:
    return job.vector_store_id, job.file_id, job.seq


class Catalog:
    def __init__(self, where: Path | str, several_processes: bool = False) -> None:
        """`where`: the data directory (SQLite there) or a postgresql:// URL;
        `several_processes`: other processes of this machine use the same SQLite file."""
        self._db: Database | PostgresDatabase
        if isinstance(where, str) and where.startswith(("postgresql://", "postgres://")):
            self._db = PostgresDatabase(where, _PG_SCHEMA)
        else:
            self._db = Database(Path(where) / "vector_stores.db", _SCHEMA, several_processes)
            have = self._db.columns("vector_store_files") | {
                f"vector_stores.{c}" for c in self._db.columns("vector_stores")
            }
            with self._db.tx() as db:
                for column, statement in _MIGRATIONS.items():
                    if column not in have:
                        db.execute(statement)

    @property
    def shared(self) -> bool:
        """Whether other processes may use this catalog too."""
        return self._db.shared

    # --- vector stores --------------------------------------------------------------------

    def create_store(
        self, name: str | None, metadata: dict[str, Any], expires_after_days: int | None = None
    ) -> VectorStore:
        now = int(time.time())
        store_id = new_id("vs_")
        with self._db.tx() as db:
            db.execute(
                f"INSERT INTO vector_stores ({_STORE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (store_id, name, json.dumps(metadata), now, now, expires_after_days),
            )
        store = self.get_store(store_id)
        assert store is not None
        return store

    def get_store(self, store_id: str) -> VectorStore | None:
        with self._db.tx() as db:
            row = db.execute(
                f"SELECT {_STORE_COLUMNS} FROM vector_stores WHERE id = ?", (store_id,)
            ).fetchone()
            if row is None:
                return None
            counts = dict(
                db.execute(
                    "SELECT status, COUNT(*) FROM vector_store_files WHERE vector_store_id = ? "
                    "GROUP BY status",
                    (store_id,),
                ).fetchall()
            )
        return VectorStore(
            row[0], row[1], json.loads(row[2]), row[3], row[4], _counts(counts), row[5]
        )

    def list_stores(self, order: str = "desc") -> list[VectorStore]:
        direction = "ASC" if order == "asc" else "DESC"
        with self._db.tx() as db:
            ids = [
                r[0]
                for r in db.execute(
                    f"SELECT id FROM vector_stores ORDER BY created_at {direction}, "
                    f"{self._db.insertion_order} {direction}"
                ).fetchall()
            ]
        return [s for i in ids if (s := self.get_store(i)) is not None]

    def update_store(
        self,
        store_id: str,
        name: str | None,
        metadata: dict[str, Any] | None,
        expires_after_days: int | Literal["unchanged"] | None = "unchanged",
    ) -> VectorStore | None:
        """Change what is given (expires_after_days None: the store never expires; a new
        policy counts from now, so it also brings an expired store back)."""
        with self._db.tx() as db:
            if expires_after_days != "unchanged":
                db.execute(
                    "UPDATE vector_stores SET expires_after_days = ?, last_active_at = ? "
                    "WHERE id = ?",
                    (expires_after_days, int(time.time()), store_id),
                )
            if name is not None:
                db.execute("UPDATE vector_stores SET name = ? WHERE id = ?", (name, store_id))
            if metadata is not None:
                db.execute(
                    "UPDATE vector_stores SET metadata = ? WHERE id = ?",
                    (json.dumps(metadata), store_id),
                )
        return self.get_store(store_id)

    def delete_store(self, store_id: str) -> bool:
        with self._db.tx() as db:
            db.execute("DELETE FROM vector_store_files WHERE vector_store_id = ?", (store_id,))
            db.execute(
                "DELETE FROM vector_store_file_batch_files WHERE batch_id IN "
                "(SELECT id FROM vector_store_file_batches WHERE vector_store_id = ?)",
                (store_id,),
            )
            db.execute(
                "DELETE FROM vector_store_file_batches WHERE vector_store_id = ?", (store_id,)
            )
            return db.execute("DELETE FROM vector_stores WHERE id = ?", (store_id,)).rowcount > 0

    def touch(self, store_id: str) -> None:
        with self._db.tx() as db:
            db.execute(
                "UPDATE vector_stores SET last_active_at = ? WHERE id = ?",
                (int(time.time()), store_id),
            )

    # --- files in stores (and the ingestion queue) ----------------------------------------

    def add_file(
        self,
        store_id: str,
        file_id: str,
        attributes: dict[str, Any],
        chunking: tuple[int, int] | None = None,
    ) -> VectorStoreFile:
        """Attach a file (again): its status becomes in_progress, which queues ingestion
        (chunked as `chunking` says: size and overlap in tokens; None: the server's)."""
        return self._attach(store_id, file_id, attributes, IN_PROGRESS, None, None, chunking)

    def record_ingested(
        self,
        store_id: str,
        file_id: str,
        attributes: dict[str, Any],
        chunks: int,
        error: str | None = None,
    ) -> VectorStoreFile:
        """Attach a file already ingested elsewhere (a Ray pipeline): completed with its
        chunk count, or failed with the error, never queued for this process's worker."""
        status = FAILED if error else COMPLETED
        last_error = json.dumps({"code": "invalid_file", "message": error}) if error else None
        return self._attach(store_id, file_id, attributes, status, last_error, chunks)

    def _attach(
        self,
        store_id: str,
        file_id: str,
        attributes: dict[str, Any],
        status: str,
        last_error: str | None,
        chunks: int | None,
        chunking: tuple[int, int] | None = None,
    ) -> VectorStoreFile:
        """Insert or replace the attachment as a new attach (a new seq, no attempts);
        `chunks` None keeps an earlier attach's count until the new one is ingested."""
        new_chunks = "" if chunks is None else " chunks = excluded.chunks,"
        with self._db.tx() as db:
            seq = db.execute(self._next_seq).fetchone()[0]
            db.execute(
                "INSERT INTO vector_store_files (vector_store_id, file_id, status, last_error, "
                "attributes, created_at, chunks, seq, attempts, chunking) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?) "
                "ON CONFLICT (vector_store_id, file_id) DO UPDATE SET status = excluded.status,"
                " last_error = excluded.last_error, attributes = excluded.attributes,"
                f"{new_chunks} seq = excluded.seq, attempts = 0, chunking = excluded.chunking",
                (
                    store_id,
                    file_id,
                    status,
                    last_error,
                    json.dumps(attributes),
                    int(time.time()),
                    chunks or 0,
                    seq,
                    json.dumps(list(chunking)) if chunking else "",
                ),
            )
        vsf = self.get_file(store_id, file_id)
        assert vsf is not None
        return vsf

    @property
    def _next_seq(self) -> str:
        if self._db.dialect == "postgres":
            return "SELECT nextval('vector_store_files_seq')"
        return "SELECT COALESCE(MAX(seq), 0) + 1 FROM vector_store_files"

    def get_file(self, store_id: str, file_id: str) -> VectorStoreFile | None:
        with self._db.tx() as db:
            row = db.execute(
                f"SELECT {_FILE_COLUMNS} FROM vector_store_files "
                "WHERE vector_store_id = ? AND file_id = ?",
                (store_id, file_id),
            ).fetchone()
        return self._file(row) if row else None

    def list_files(
        self, store_id: str, status: str | None = None, order: str = "desc"
    ) -> list[VectorStoreFile]:
        source = "FROM vector_store_files f WHERE f.vector_store_id = ?"
        return self._select_files(source, store_id, status, order)

    def _select_files(
        self, source: str, key: str, status: str | None, order: str
    ) -> list[VectorStoreFile]:
        """Files from `source` (FROM ... WHERE with one `?`, the key; the files table as
        `f`), of one status or all, oldest or newest attach first."""
        direction = "ASC" if order == "asc" else "DESC"
        query, args = f"SELECT {_F_COLUMNS} {source}", [key]
        if status:
            query += " AND f.status = ?"
            args.append(status)
        with self._db.tx() as db:
            rows = db.execute(f"{query} ORDER BY f.seq {direction}", args).fetchall()
        return [self._file(r) for r in rows]

    def stores_with_file(self, file_id: str) -> list[str]:
        with self._db.tx() as db:
            return [
                r[0]
                for r in db.execute(
                    "SELECT vector_store_id FROM vector_store_files WHERE file_id = ?", (file_id,)
                ).fetchall()
            ]

    def remove_file(self, store_id: str, file_id: str) -> bool:
        with self._db.tx() as db:
            return (
                db.execute(
                    "DELETE FROM vector_store_files WHERE vector_store_id = ? AND file_id = ?",
                    (store_id, file_id),
                ).rowcount
                > 0
            )

    # --- file batches -----------------------------------------------------------------------

    def create_batch(self, store_id: str, attached: list[VectorStoreFile]) -> FileBatch:
        """Record attaches just made as one batch."""
        batch_id = new_id("vsfb_")
        with self._db.tx() as db:
            db.execute(
                "INSERT INTO vector_store_file_batches (id, vector_store_id, created_at) "
                "VALUES (?, ?, ?)",
                (batch_id, store_id, int(time.time())),
            )
            for vsf in attached:
                db.execute(
                    "INSERT INTO vector_store_file_batch_files (batch_id, file_id, seq) "
                    "VALUES (?, ?, ?) ON CONFLICT (batch_id, file_id) DO UPDATE SET "
                    "seq = excluded.seq",
                    (batch_id, vsf.file_id, vsf.seq),
                )
        batch = self.get_batch(store_id, batch_id)
        assert batch is not None
        return batch

    def get_batch(self, store_id: str, batch_id: str) -> FileBatch | None:
        with self._db.tx() as db:
            row = db.execute(
                "SELECT id, vector_store_id, created_at, cancelled FROM vector_store_file_batches "
                "WHERE id = ? AND vector_store_id = ?",
                (batch_id, store_id),
            ).fetchone()
            if row is None:
                return None
            counts = dict(
                db.execute(
                    f"SELECT f.status, COUNT(*) {_BATCH_JOIN} GROUP BY f.status", (batch_id,)
                ).fetchall()
            )
        return FileBatch(row[0], row[1], row[2], bool(row[3]), _counts(counts))

    def batch_files(
        self, batch_id: str, status: str | None = None, order: str = "desc"
    ) -> list[VectorStoreFile]:
        return self._select_files(_BATCH_JOIN, batch_id, status, order)

    def cancel_batch(self, store_id: str, batch_id: str) -> list[str] | None:
        """Cancel the batch's files still waiting or being ingested (a job in progress
        then writes nothing, or has what it wrote removed); the rest stay as they are.
        Returns the files cancelled (None: no such batch in the store)."""
        with self._db.tx() as db:
            found = db.execute(
                "UPDATE vector_store_file_batches SET cancelled = 1 "
                "WHERE id = ? AND vector_store_id = ?",
                (batch_id, store_id),
            ).rowcount
            if not found:
                return None
            rows = db.execute(
                "UPDATE vector_store_files SET status = ? WHERE vector_store_id = ? AND "
                "status = ? AND (file_id, seq) IN (SELECT file_id, seq FROM "
                "vector_store_file_batch_files WHERE batch_id = ?) RETURNING file_id",
                (CANCELLED, store_id, IN_PROGRESS, batch_id),
            ).fetchall()
        return [r[0] for r in rows]

    @contextmanager
    def next_job(self) -> Iterator[VectorStoreFile | None]:
        """The oldest queued job this process can have to itself, claimed until the block
        ends (None: nothing queued, or every queued job is being done elsewhere)."""
        with self.next_jobs(1) as jobs:
            yield jobs[0] if jobs else None

    @contextmanager
    def next_jobs(self, limit: int) -> Iterator[list[VectorStoreFile]]:
        """Up to `limit` of the oldest queued jobs this process can have to itself, oldest
        first, each claimed until the block ends (empty: nothing queued, or every queued
        job is being done elsewhere)."""
        with self._db.tx() as db:
            rows = db.execute(
                f"SELECT {_FILE_COLUMNS} FROM vector_store_files WHERE status = ? "
                "ORDER BY seq LIMIT ?",
                (IN_PROGRESS, limit + _CLAIM_CANDIDATES - 1),
            ).fetchall()
        jobs: list[VectorStoreFile] = []
        with ExitStack() as claims:
            for row in rows:
                if len(jobs) == limit:
                    break
                job = self._file(row)
                claim = self._db.claim(f"job/{job.vector_store_id}/{job.file_id}")
                # Claimed: still queued by the same attach? (It may have finished, here or
                # elsewhere, between the query and the claim.)
                if claims.enter_context(claim) and self.is_queued(job):
                    jobs.append(job)
            yield jobs

    def is_queued(self, job: VectorStoreFile) -> bool:
        with self._db.tx() as db:
            row = db.execute(
                f"SELECT 1 FROM vector_store_files WHERE {_JOB} AND status = ?",
                (*_job_key(job), IN_PROGRESS),
            ).fetchone()
        return row is not None

    def requeue_completed(self) -> int:
        """Queue every completed file again (its chunks are to be made anew); how many."""
        with self._db.tx() as db:
            return db.execute(
                "UPDATE vector_store_files SET status = ?, attempts = 0, chunks = 0 "
                "WHERE status = ?",
                (IN_PROGRESS, COMPLETED),
            ).rowcount

    def start_attempt(self, job: VectorStoreFile) -> int:
        """Count one more start of the job (0 when it is no longer current). Counted before
        the work, so a start the server did not survive counts too."""
        with self._db.tx() as db:
            row = db.execute(
                "UPDATE vector_store_files SET attempts = attempts + 1 "
                f"WHERE {_JOB} RETURNING attempts",
                _job_key(job),
            ).fetchone()
        return row[0] if row else 0

    def undo_attempt(self, job: VectorStoreFile) -> None:
        """A start that ended because the server shut down does not count."""
        with self._db.tx() as db:
            db.execute(
                "UPDATE vector_store_files SET attempts = "
                f"CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END WHERE {_JOB}",
                _job_key(job),
            )

    def is_current(self, job: VectorStoreFile) -> bool:
        """Whether the job's file is still attached by the same attach (not detached,
        deleted or attached again since) and not cancelled."""
        with self._db.tx() as db:
            row = db.execute(
                f"SELECT 1 FROM vector_store_files WHERE {_JOB} AND status != ?",
                (*_job_key(job), CANCELLED),
            ).fetchone()
        return row is not None

    def attached(self, store_ids: list[str]) -> dict[tuple[str, str], str]:
        """(store, file) pairs attached to these stores, whatever their status, each with
        its attributes as stored (JSON text: parsed only for the files a search returns)."""
        with self._db.tx() as db:
            rows = db.execute(
                "SELECT vector_store_id, file_id, attributes FROM vector_store_files "
                f"WHERE vector_store_id IN ({', '.join('?' * len(store_ids))})",
                store_ids,
            ).fetchall()
        return {(r[0], r[1]): r[2] for r in rows}

    def update_attributes(
        self, store_id: str, file_id: str, attributes: dict[str, Any]
    ) -> VectorStoreFile | None:
        """Replace a file's attributes (searches filter on them from now on)."""
        with self._db.tx() as db:
            db.execute(
                "UPDATE vector_store_files SET attributes = ? "
                "WHERE vector_store_id = ? AND file_id = ?",
                (json.dumps(attributes), store_id, file_id),
            )
        return self.get_file(store_id, file_id)

    def all_attached(self) -> set[tuple[str, str]]:
        """Every (store, file) pair attached anywhere."""
        with self._db.tx() as db:
            rows = db.execute("SELECT vector_store_id, file_id FROM vector_store_files")
            return {(r[0], r[1]) for r in rows.fetchall()}

    def finish_job(
        self,
        job: VectorStoreFile,
        chunks: int,
        error: str | None = None,
        code: str = "server_error",
    ) -> bool:
        """Record the job's outcome; False when it is no longer current (then nothing is
        recorded: the row belongs to a newer attach, or to nobody, or was cancelled)."""
        status = FAILED if error else COMPLETED
        last_error = json.dumps({"code": code, "message": error}) if error else None
        with self._db.tx() as db:
            return (
                db.execute(
                    "UPDATE vector_store_files SET status = ?, last_error = ?, chunks = ? "
                    f"WHERE {_JOB} AND status != ?",
                    (status, last_error, chunks, *_job_key(job), CANCELLED),
                ).rowcount
                > 0
            )

    @staticmethod
    def _file(row: tuple[Any, ...]) -> VectorStoreFile:
        return VectorStoreFile(
            row[0],
            row[1],
            row[2],
            json.loads(row[3]) if row[3] else None,
            json.loads(row[4]),
            row[5],
            row[6],
            row[7],
            _chunking(row[8]),
        )

    def close(self) -> None:
        self._db.close()
