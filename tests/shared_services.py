"""Real servers for the shared-storage tests (issue 20): SeaweedFS and PostgreSQL from
bench/shared_services.py, skipped (visibly) only where they are not installed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from bench import shared_services
from bench.shared_services import S3Server, ServiceUnavailable
from tests.conftest import RunningServer, start_server, stop_server

__all__ = ["BACKENDS", "S3Server", "chunk_backend_server", "postgres", "seaweedfs"]

T = TypeVar("T")


@contextmanager
def _or_skip(service: AbstractContextManager[T]) -> Iterator[T]:
    """The running service, or a visible skip where it is not installed."""
    try:
        value = service.__enter__()
    except ServiceUnavailable as e:
        pytest.skip(str(e))
    try:
        yield value
    finally:
        service.__exit__(None, None, None)


def seaweedfs(tmp: Path) -> AbstractContextManager[S3Server]:
    return _or_skip(shared_services.seaweedfs(tmp))


def postgres(pgvector: bool = False) -> AbstractContextManager[str]:
    return _or_skip(shared_services.postgres(pgvector))


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
