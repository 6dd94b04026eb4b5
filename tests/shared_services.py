"""Real servers for the shared-storage tests (issue 20): SeaweedFS and PostgreSQL from
bench/shared_services.py, skipped (visibly) only where they are not installed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench import shared_services
from bench.shared_services import S3Server, ServiceUnavailable
from tests.conftest import RunningServer, start_server, stop_server

__all__ = ["BACKENDS", "S3Server", "chunk_backend_server", "postgres", "seaweedfs"]


@contextmanager
def seaweedfs(tmp: Path) -> Iterator[S3Server]:
    try:
        server = shared_services.seaweedfs(tmp)
        s3 = server.__enter__()
    except ServiceUnavailable as e:
        pytest.skip(str(e))
    try:
        yield s3
    finally:
        server.__exit__(None, None, None)


@contextmanager
def postgres(pgvector: bool = False) -> Iterator[str]:
    try:
        server = shared_services.postgres(pgvector)
        url = server.__enter__()
    except ServiceUnavailable as e:
        pytest.skip(str(e))
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


BACKENDS = ["lancedb", pytest.param("pgvector", marks=pytest.mark.shared_storage)]


@contextmanager
def chunk_backend_server(tmp: Path, backend: str, *args: str) -> Iterator[RunningServer]:
    """A Hearth server whose chunks are in `backend`: LanceDB in its data directory, or
    pgvector in a PostgreSQL of its own (which then holds the catalog too)."""
    data = ["--data-dir", str(tmp / "data"), *args]
    if backend == "lancedb":
        server = start_server(tmp, *data)
        try:
            yield server
        finally:
            stop_server(server)
        return
    with postgres(pgvector=True) as url:
        config = tmp / "pgvector.toml"
        config.write_text(f'[retrieval]\nchunk_store = "pgvector"\ndatabase_url = "{url}"\n')
        server = start_server(tmp, "--config", str(config), *data)
        try:
            yield server
        finally:
            stop_server(server)
