"""Uploaded files: bytes on disk under the data directory, metadata in SQLite; or, shared
by several Hearth processes, bytes in an S3 bucket and metadata in PostgreSQL.

The OpenAI Files API sits on this (server/api/files.py). File ids are random and the stored
name is the id, so a client-supplied filename never becomes a path.
"""

from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from retrieval.blobs import Blobs, FileTooLarge, LocalBlobs
from retrieval.postgres import PostgresDatabase
from retrieval.sqlite import Database
from server.ids import new_id

__all__ = ["FileStore", "FileTooLarge", "StoredFile", "new_file_id", "sanitize_filename"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    purpose TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
"""
_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    purpose TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    ord BIGSERIAL
);
ALTER TABLE files ADD COLUMN IF NOT EXISTS expires_at BIGINT;
"""
# Added since the first release (files.expires_after), for SQLite databases made before.
_ADD_EXPIRES_AT = "ALTER TABLE files ADD COLUMN expires_at INTEGER"
_COLUMNS = "id, filename, bytes, purpose, created_at, expires_at"
# A file is there until its expires_at (a parameter: now).
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
# In shared storage (or a data directory several processes use) another process may be
# between writing a file's bytes and its row:
# bytes without a row are removed only once they are older than this.
_SHARED_LEFTOVER_SECONDS = 3600.0


@dataclass(frozen=True)
class StoredFile:
    id: str
    filename: str
    bytes: int
    purpose: str
    created_at: int
    expires_at: int | None = None  # a time (Unix seconds) after which the file is gone


def new_file_id() -> str:
    return new_id("file-")


def sanitize_filename(name: str) -> str:
    """The last path component, without control characters or path tricks."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = re.sub(r"\s+", " ", name).strip().lstrip(".")
    return name[:255] or "upload"


class FileStore:
    def __init__(
        self,
        data_dir: Path,
        max_bytes: int,
        database_url: str = "",
        blobs: Blobs | None = None,
        several_processes: bool = False,
    ) -> None:
        """Metadata in SQLite under `data_dir` (or PostgreSQL at `database_url`); bytes in
        `blobs` (default: the folder `data_dir/files`)."""
        self.max_bytes = max_bytes
        self.blobs: Blobs = blobs or LocalBlobs(data_dir / "files")
        self._db: Database | PostgresDatabase = (
            PostgresDatabase(database_url, _PG_SCHEMA)
            if database_url
            else Database(data_dir / "files.db", _SCHEMA, several_processes)
        )
        if isinstance(self._db, Database) and "expires_at" not in self._db.columns("files"):
            with self._db.tx() as db:
                db.execute(_ADD_EXPIRES_AT)
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """What a crash can leave behind: a half-written upload, or a file whose row was
        never written (or already deleted)."""
        with self._db.tx() as db:
            ids = {row[0] for row in db.execute("SELECT id FROM files")}
        local = isinstance(self.blobs, LocalBlobs) and not self._db.shared
        cutoff = time.time() - _SHARED_LEFTOVER_SECONDS
        for name, mtime in self.blobs.names().items():
            if name not in ids and (local or mtime < cutoff):
                self.blobs.delete(name)

    def local_path(self, file_id: str) -> Path | None:
        """The file's bytes on this machine's disk (None when they are in a bucket)."""
        return self.blobs.local_path(file_id)

    def add(
        self,
        source: BinaryIO,
        filename: str,
        purpose: str,
        file_id: str | None = None,
        expires_after: int | None = None,
    ) -> StoredFile:
        """Store a file under a new id (or the given one, which must be new); with
        `expires_after`, it is gone that many seconds after its creation."""
        file_id = file_id or new_file_id()
        size = self.blobs.put(file_id, source, self.max_bytes)
        now = int(time.time())
        expires_at = None if expires_after is None else now + expires_after
        stored = StoredFile(file_id, sanitize_filename(filename), size, purpose, now, expires_at)
        with self._db.tx() as db:
            db.execute(
                f"INSERT INTO files ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    stored.id,
                    stored.filename,
                    stored.bytes,
                    stored.purpose,
                    stored.created_at,
                    stored.expires_at,
                ),
            )
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        """The file, unless there is none or it has expired (the sweep may not have removed
        it yet: it is gone all the same)."""
        with self._db.tx() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM files WHERE id = ? AND {_LIVE}",
                (file_id, int(time.time())),
            ).fetchone()
        return StoredFile(*row) if row else None

    def list(self, purpose: str | None = None, order: str = "desc") -> list[StoredFile]:
        direction = "ASC" if order == "asc" else "DESC"
        query = f"SELECT {_COLUMNS} FROM files WHERE {_LIVE}"
        args: tuple[str | int, ...] = (int(time.time()),)
        if purpose:
            query += " AND purpose = ?"
            args = (*args, purpose)
        order_by = f"created_at {direction}, {self._db.insertion_order} {direction}"
        with self._db.tx() as db:
            rows = db.execute(f"{query} ORDER BY {order_by}", args).fetchall()
        return [StoredFile(*r) for r in rows]

    def expired(self, now: float | None = None) -> list[str]:
        """Ids of the files whose time is up (for the sweep to delete)."""
        moment = int(time.time() if now is None else now)
        with self._db.tx() as db:
            rows = db.execute(
                "SELECT id FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?", (moment,)
            ).fetchall()
        return [r[0] for r in rows]

    def delete(self, file_id: str) -> bool:
        with self._db.tx() as db:
            deleted = db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0
        self.blobs.delete(file_id)
        return deleted

    def close(self) -> None:
        self._db.close()
