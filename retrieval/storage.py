"""Where retrieval keeps things, as one value that can be handed to another process (a Ray
worker, issue 20): the data directory, or a bucket and a database several Hearth processes
share; and the stores opened from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from retrieval.blobs import Blobs, LocalBlobs, ObjectBlobs
from retrieval.catalog import Catalog
from retrieval.chunk_store import ChunkStore
from retrieval.files import FileStore
from retrieval.pg_chunk_store import PgChunkStore
from retrieval.s3 import S3Options, bucket_path, is_object_store

T = TypeVar("T")


class StorageUnavailable(RuntimeError):
    """The configured bucket or database cannot be used (unreachable, refused, missing
    driver): said in one line at start-up, not as a traceback."""


def _opening(what: str, open_: Callable[[], T]) -> T:
    try:
        return open_()
    except ModuleNotFoundError as e:
        raise StorageUnavailable(
            f"{what} needs the {e.name} package: pip install 'hearth[shared]'"
        ) from e
    except Exception as e:
        # psycopg's OperationalError, pyarrow's OSError, LanceDB's object-store errors.
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageUnavailable(f"cannot open {what}: {reason}") from e


@dataclass(frozen=True)
class Storage:
    data_dir: Path
    lancedb_uri: str = ""  # "": <data_dir>/lancedb
    database_url: str = ""  # "": SQLite in data_dir
    chunk_store: str = "lancedb"  # or "pgvector", in database_url's PostgreSQL
    files_uri: str = ""  # "": beside an s3:// lancedb_uri, else <data_dir>/files
    s3: S3Options = field(default_factory=S3Options)
    # Other Hearth processes of this machine use the same data directory at once
    # (`hearth serve --ray`'s replicas): claims take file locks, reads look for new writes.
    several_processes: bool = False

    @property
    def in_bucket(self) -> bool:
        return is_object_store(self.lancedb_uri)

    @property
    def files_location(self) -> str:
        """Where uploaded bytes go: an s3:// prefix, or "" for the data directory."""
        if self.files_uri:
            return self.files_uri
        return f"{self.lancedb_uri.rstrip('/')}/files" if self.in_bucket else ""

    def blobs(self) -> Blobs:
        location = self.files_location
        if location:
            spool = self.data_dir / "spool"
            return ObjectBlobs(self.s3.arrow_filesystem(), bucket_path(location), spool)
        return LocalBlobs(self.data_dir / "files")

    def _where(self) -> str:
        parts = [self.files_location or "", self._database]
        return " and ".join(p for p in parts if p) or str(self.data_dir)

    @property
    def _database(self) -> str:
        """The database URL without its password, for messages."""
        if not self.database_url:
            return ""
        scheme, _, rest = self.database_url.partition("://")
        credentials, at, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}{at}{host}" if at else self.database_url

    def files(self, max_upload_bytes: int) -> FileStore:
        return _opening(
            f"the uploaded files ({self._where()})",
            lambda: FileStore(
                self.data_dir,
                max_upload_bytes,
                self.database_url,
                self.blobs(),
                self.several_processes,
            ),
        )

    def catalog(self) -> Catalog:
        where = self._database or str(self.data_dir)
        return _opening(
            f"the catalog ({where})",
            lambda: Catalog(self.database_url or self.data_dir, self.several_processes),
        )

    def chunks(self, dim: int) -> ChunkStore | PgChunkStore:
        if self.chunk_store == "pgvector":
            return _opening(
                f"the pgvector chunk store ({self._database})",
                lambda: PgChunkStore(self.database_url, dim),
            )
        uri = self.lancedb_uri or str(self.data_dir / "lancedb")
        options = self.s3.lance_options() if self.in_bucket else None
        return _opening(
            f"the chunk store ({uri})",
            lambda: ChunkStore(uri, dim, options, self.several_processes),
        )
