"""The bytes of uploaded files: a local folder, or a prefix in an S3 bucket that several
Hearth processes share (issue 20). Names are file ids, never client-supplied names."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO, Protocol

_BLOCK = 1 << 20


class FileTooLarge(ValueError):
    pass


def _copy_limited(source: BinaryIO, out: BinaryIO, max_bytes: int) -> int:
    size = 0
    while block := source.read(_BLOCK):
        size += len(block)
        if size > max_bytes:
            raise FileTooLarge(f"the file is larger than the {max_bytes >> 20} MiB limit")
        out.write(block)
    return size


class Blobs(Protocol):
    def put(self, name: str, source: BinaryIO, max_bytes: int) -> int: ...

    def local_path(self, name: str) -> Path | None:
        """The file itself on this machine's disk, if it is there."""
        ...

    def readable(self, name: str) -> Any:
        """A context manager giving a local path to read the file from."""
        ...

    def open(self, name: str) -> BinaryIO: ...

    def delete(self, name: str) -> None: ...

    def names(self) -> dict[str, float]:
        """Every stored name, with its modification time (seconds since the epoch)."""
        ...


class LocalBlobs:
    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)

    def put(self, name: str, source: BinaryIO, max_bytes: int) -> int:
        tmp = self.dir / f".{name}.part"
        try:
            with tmp.open("wb") as out:
                size = _copy_limited(source, out, max_bytes)
            tmp.replace(self.dir / name)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def local_path(self, name: str) -> Path:
        return self.dir / name

    @contextmanager
    def readable(self, name: str) -> Iterator[Path]:
        yield self.dir / name

    def open(self, name: str) -> BinaryIO:
        return (self.dir / name).open("rb")

    def delete(self, name: str) -> None:
        (self.dir / name).unlink(missing_ok=True)

    def names(self) -> dict[str, float]:
        return {p.name: p.stat().st_mtime for p in self.dir.iterdir()}


class ObjectBlobs:
    """Objects `<base>/<name>` through a pyarrow filesystem (S3FileSystem). An upload is
    spooled to local disk first, so a file over the limit never reaches the bucket and an
    object, once there, is whole (S3 makes an object visible only when its upload
    completes)."""

    def __init__(self, filesystem: Any, base: str, spool_dir: Path) -> None:
        self._fs = filesystem
        self.base = base.rstrip("/")
        self._spool = spool_dir
        self._spool.mkdir(parents=True, exist_ok=True)

    def _key(self, name: str) -> str:
        return f"{self.base}/{name}"

    def put(self, name: str, source: BinaryIO, max_bytes: int) -> int:
        with tempfile.TemporaryFile(dir=self._spool) as spool:
            size = _copy_limited(source, spool, max_bytes)
            spool.seek(0)
            with self._fs.open_output_stream(self._key(name)) as out:
                shutil.copyfileobj(spool, out, _BLOCK)
        return size

    def local_path(self, name: str) -> None:
        return None

    @contextmanager
    def readable(self, name: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(dir=self._spool) as tmp:
            path = Path(tmp) / name
            with self._fs.open_input_stream(self._key(name)) as source, path.open("wb") as out:
                shutil.copyfileobj(source, out, _BLOCK)
            yield path

    def open(self, name: str) -> BinaryIO:
        return self._fs.open_input_stream(self._key(name))

    def delete(self, name: str) -> None:
        with suppress(FileNotFoundError):
            self._fs.delete_file(self._key(name))

    def names(self) -> dict[str, float]:
        from pyarrow import fs

        infos = self._fs.get_file_info(fs.FileSelector(self.base, allow_not_found=True))
        return {
            info.base_name: info.mtime.timestamp() if info.mtime else 0.0
            for info in infos
            if info.type == fs.FileType.File
        }
