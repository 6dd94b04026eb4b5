"""Uploaded files: bytes on disk under the data directory, metadata in SQLite.

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

from retrieval.sqlite import Database
from server.ids import new_id

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    purpose TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"""


class FileTooLarge(ValueError):
    pass


@dataclass(frozen=True)
class StoredFile:
    id: str
    filename: str
    bytes: int
    purpose: str
    created_at: int


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
    def __init__(self, data_dir: Path, max_bytes: int) -> None:
        self.dir = data_dir / "files"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._db = Database(data_dir / "files.db", _SCHEMA)
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """What a crash can leave on disk: a half-written upload, or a file whose row was
        never written (or already deleted)."""
        with self._db.tx() as db:
            ids = {row[0] for row in db.execute("SELECT id FROM files")}
        for path in self.dir.iterdir():
            if path.name not in ids:
                path.unlink(missing_ok=True)

    def path(self, file_id: str) -> Path:
        return self.dir / file_id

    def add(
        self, source: BinaryIO, filename: str, purpose: str, file_id: str | None = None
    ) -> StoredFile:
        """Store a file under a new id (or the given one, which must be new)."""
        file_id = file_id or new_file_id()
        tmp = self.dir / f".{file_id}.part"
        size = 0
        try:
            with tmp.open("wb") as out:
                while block := source.read(1 << 20):
                    size += len(block)
                    if size > self.max_bytes:
                        raise FileTooLarge(
                            f"the file is larger than the {self.max_bytes >> 20} MiB limit"
                        )
                    out.write(block)
            tmp.replace(self.path(file_id))
        finally:
            tmp.unlink(missing_ok=True)
        stored = StoredFile(file_id, sanitize_filename(filename), size, purpose, int(time.time()))
        with self._db.tx() as db:
            db.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?)",
                (stored.id, stored.filename, stored.bytes, stored.purpose, stored.created_at),
            )
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        with self._db.tx() as db:
            row = db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        return StoredFile(*row) if row else None

    def list(self, purpose: str | None = None, order: str = "desc") -> list[StoredFile]:
        direction = "ASC" if order == "asc" else "DESC"
        query = "SELECT * FROM files"
        args: tuple[str, ...] = ()
        if purpose:
            query += " WHERE purpose = ?"
            args = (purpose,)
        with self._db.tx() as db:
            rows = db.execute(
                f"{query} ORDER BY created_at {direction}, rowid {direction}", args
            ).fetchall()
        return [StoredFile(*r) for r in rows]

    def delete(self, file_id: str) -> bool:
        with self._db.tx() as db:
            deleted = db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0
        self.path(file_id).unlink(missing_ok=True)
        return deleted

    def close(self) -> None:
        self._db.close()
