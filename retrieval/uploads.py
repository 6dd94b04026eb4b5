"""OpenAI's Uploads: a file sent in parts (each at most 64 MiB), then completed into one
File in the FileStore.

An upload is a folder under `<data_dir>/uploads/<upload id>`: `upload.json` says what it
is, each part is a file named by its part id (written to a temporary name, then renamed,
so a part is there whole or not at all). Parts are found by listing the folder, so adding
one rewrites nothing shared and several processes of one machine (the replicas of
`hearth serve --ray`) can take parts of one upload. An upload lasts an hour, as OpenAI's:
then its parts are deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import BinaryIO

from retrieval.files import FileStore, StoredFile
from server.ids import new_id

PART_MAX_BYTES = 64 << 20
UPLOAD_SECONDS = 3600
# Pending uploads at once: each may hold up to the file size limit on disk.
MAX_PENDING = 32
_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class UploadError(ValueError):
    """The request cannot be done to this upload (the message says why)."""


@dataclass(frozen=True)
class Upload:
    id: str
    filename: str
    bytes: int
    mime_type: str
    purpose: str
    created_at: int
    expires_at: int
    status: str  # pending, completed, cancelled (expired is said from expires_at)
    file_expires_after: int | None = None  # the File's expires_after.seconds
    file_id: str | None = None

    def status_at(self, now: float) -> str:
        return "expired" if self.status == "pending" and now >= self.expires_at else self.status


@dataclass(frozen=True)
class Part:
    id: str
    upload_id: str
    created_at: int
    bytes: int


class UploadStore:
    def __init__(self, folder: Path, files: FileStore) -> None:
        self.folder = folder
        self.files = files
        self._lock = threading.Lock()  # status changes of one process; renames do the rest

    def create(
        self,
        filename: str,
        size: int,
        mime_type: str,
        purpose: str,
        file_expires_after: int | None = None,
    ) -> Upload:
        if size > self.files.max_bytes:
            raise UploadError(
                f"The file is larger than this server accepts ({self.files.max_bytes} bytes)."
            )
        with self._lock:
            pending = sum(1 for u in self._all() if u.status_at(time.time()) == "pending")
            if pending >= MAX_PENDING:
                raise UploadError(
                    f"{pending} uploads are pending; complete or cancel one first "
                    "(or let it expire, an hour after it began)."
                )
            now = int(time.time())
            upload = Upload(
                new_id("upload_"),
                filename,
                size,
                mime_type,
                purpose,
                now,
                now + UPLOAD_SECONDS,
                "pending",
                file_expires_after,
            )
            (self.folder / upload.id).mkdir(parents=True)
            self._write(upload)
        return upload

    def get(self, upload_id: str) -> Upload | None:
        if not set(upload_id) <= _ID_CHARS or not upload_id.startswith("upload_"):
            return None  # never a path outside the folder
        try:
            text = (self.folder / upload_id / "upload.json").read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Upload(**json.loads(text))

    def add_part(self, upload: Upload, source: BinaryIO) -> Part:
        """Store a part (at most PART_MAX_BYTES; all parts together at most the bytes the
        upload declared)."""
        self._require_pending(upload)
        part = Part(new_id("part_"), upload.id, int(time.time()), 0)
        folder = self.folder / upload.id
        room = upload.bytes - sum(p.bytes for p in self.parts(upload))
        limit = min(PART_MAX_BYTES, max(room, 0))
        temporary = folder / f".{part.id}.partial"
        written = 0
        try:
            with open(temporary, "wb") as out:
                while block := source.read(1 << 20):
                    written += len(block)
                    if written > limit:
                        raise UploadError(
                            f"The part is larger than {PART_MAX_BYTES >> 20} MiB."
                            if limit == PART_MAX_BYTES
                            else "The parts are larger than the bytes the upload declared "
                            f"({upload.bytes})."
                        )
                    out.write(block)
            if self._status(upload.id) != "pending":  # completed or cancelled meanwhile
                raise UploadError(f"The upload is {self._status(upload.id)}.")
            os.replace(temporary, folder / part.id)
        finally:
            temporary.unlink(missing_ok=True)
        return replace(part, bytes=written)

    def parts(self, upload: Upload) -> list[Part]:
        out = []
        for path in (self.folder / upload.id).glob("part_*"):
            stat = path.stat()
            out.append(Part(path.name, upload.id, int(stat.st_mtime), stat.st_size))
        return out

    def complete(self, upload: Upload, part_ids: list[str], md5: str | None) -> Upload:
        """The parts, in the given order, become one File; the upload says which."""
        self._require_pending(upload)
        have = {p.id: p for p in self.parts(upload)}
        missing = [p for p in part_ids if p not in have]
        if missing:
            raise UploadError(f"No part {missing[0]!r} in this upload.")
        if len(set(part_ids)) != len(part_ids):
            raise UploadError("part_ids names a part more than once.")
        total = sum(have[p].bytes for p in part_ids)
        if total != upload.bytes:
            raise UploadError(
                f"The parts hold {total} bytes; the upload was created for {upload.bytes}."
            )
        paths = [self.folder / upload.id / p for p in part_ids]
        if md5:
            digest = hashlib.md5(usedforsecurity=False)
            for path in paths:
                with open(path, "rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
            if digest.hexdigest() != md5.lower():
                raise UploadError("The parts' MD5 checksum is not the md5 given.")
        with self._lock:
            self._require_pending(self.get(upload.id) or upload)
            joined = _Joined(paths)
            try:
                stored: StoredFile = self.files.add(
                    joined, upload.filename, upload.purpose, None, upload.file_expires_after
                )
            finally:
                joined.close()
            done = replace(upload, status="completed", file_id=stored.id)
            self._write(done)
        self._drop_parts(upload)
        return done

    def cancel(self, upload: Upload) -> Upload:
        with self._lock:
            self._require_pending(self.get(upload.id) or upload)
            cancelled = replace(upload, status="cancelled")
            self._write(cancelled)
        self._drop_parts(upload)
        return cancelled

    def sweep(self, now: float | None = None) -> int:
        """Delete uploads an hour old (their parts, and what says they were); how many."""
        moment = time.time() if now is None else now
        gone = 0
        for upload in self._all():
            if moment >= upload.expires_at:
                shutil.rmtree(self.folder / upload.id, ignore_errors=True)
                gone += 1
        return gone

    def _require_pending(self, upload: Upload) -> None:
        status = upload.status_at(time.time())
        if status != "pending":
            raise UploadError(f"The upload is {status}: it takes no more parts or changes.")

    def _status(self, upload_id: str) -> str:
        upload = self.get(upload_id)
        return "cancelled" if upload is None else upload.status_at(time.time())

    def _drop_parts(self, upload: Upload) -> None:
        for path in (self.folder / upload.id).glob("part_*"):
            path.unlink(missing_ok=True)

    def _write(self, upload: Upload) -> None:
        folder = self.folder / upload.id
        temporary = folder / ".upload.json.partial"
        temporary.write_text(json.dumps(asdict(upload)))
        os.replace(temporary, folder / "upload.json")

    def _all(self) -> Iterator[Upload]:
        if not self.folder.is_dir():
            return
        for entry in self.folder.iterdir():
            upload = self.get(entry.name)
            if upload is not None:
                yield upload


class _Joined:
    """Several files read one after another, as one binary stream (what FileStore.add
    reads from)."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = list(paths)
        self._current: BinaryIO | None = None

    def read(self, size: int = -1) -> bytes:
        while True:
            if self._current is None:
                if not self._paths:
                    return b""
                self._current = open(self._paths.pop(0), "rb")  # noqa: SIM115 (closed below)
            block = self._current.read(size)
            if block:
                return block
            self.close()

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
