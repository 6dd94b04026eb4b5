"""Uploads in parts (OpenAI's Uploads API) and what expires (files' and vector stores'
expires_after), through the official client on a real server, and the sweep that removes
expired files, run with the clock moved."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from retrieval.ingestion import ChunkingOptions
from retrieval.service import RetrievalService
from retrieval.storage import Storage
from retrieval.uploads import PART_MAX_BYTES, UploadError, UploadStore
from tests.conftest import RunningServer, start_server, stop_server

FACT = "The keeper of the Hearth lighthouse is Ingrid Solberg."


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    """A server on a data directory of its own (the tests read its catalog)."""
    data = tmp_path_factory.mktemp("uploads-data")
    s = start_server(tmp_path_factory.mktemp("uploads"), "--data-dir", str(data))
    yield s, data
    stop_server(s)


def test_a_file_in_parts_through_the_official_client_is_a_file_like_any(
    own_server: tuple[RunningServer, Path], tmp_path: Path
) -> None:
    server, _ = own_server
    client = server.client()
    days = "".join(f"Logbook, day {i}: calm sea, the lamp was lit at dusk.\n" for i in range(300))
    data = (days + FACT + "\n").encode()
    path = tmp_path / "logbook.txt"
    path.write_bytes(data)
    upload = client.uploads.upload_file_chunked(
        file=path, mime_type="text/plain", purpose="assistants", part_size=4 << 10
    )
    assert upload.status == "completed" and upload.file is not None
    assert upload.file.bytes == len(data) and upload.file.filename == "logbook.txt"
    assert client.files.content(upload.file.id).read() == data
    # Usable in the rest of the API: indexed in a vector store and found.
    store = client.vector_stores.create(name="uploads")
    attached = client.vector_stores.files.create_and_poll(
        vector_store_id=store.id, file_id=upload.file.id, poll_interval_ms=100
    )
    assert attached.status == "completed"
    hits = client.vector_stores.search(store.id, query="Who keeps the lighthouse?")
    assert any("Ingrid Solberg" in c.text for h in hits.data for c in h.content)


def test_parts_join_in_the_order_given_and_every_check_says_why(
    own_server: tuple[RunningServer, Path],
) -> None:
    client = own_server[0].client()
    upload = client.uploads.create(
        bytes=10, filename="hw.txt", mime_type="text/plain", purpose="user_data"
    )
    assert upload.status == "pending" and upload.expires_at == upload.created_at + 3600
    hello = client.uploads.parts.create(upload.id, data=b"hello")
    world = client.uploads.parts.create(upload.id, data=b"world")
    assert hello.object == "upload.part" and hello.upload_id == upload.id
    with pytest.raises(openai.BadRequestError, match="MD5"):
        client.uploads.complete(upload.id, part_ids=[world.id, hello.id], md5="0" * 32)
    with pytest.raises(openai.BadRequestError, match="5 bytes"):
        client.uploads.complete(upload.id, part_ids=[world.id])
    with pytest.raises(openai.BadRequestError, match="No part"):
        client.uploads.complete(upload.id, part_ids=[world.id, "part_nope"])
    md5 = hashlib.md5(b"worldhello").hexdigest()
    done = client.uploads.complete(upload.id, part_ids=[world.id, hello.id], md5=md5)
    assert done.status == "completed" and done.file is not None
    assert client.files.content(done.file.id).read() == b"worldhello"
    with pytest.raises(openai.BadRequestError, match="completed"):
        client.uploads.parts.create(upload.id, data=b"late")
    # More than declared, cancelled, unknown.
    small = client.uploads.create(
        bytes=3, filename="s.txt", mime_type="text/plain", purpose="user_data"
    )
    with pytest.raises(openai.BadRequestError, match="larger than the bytes"):
        client.uploads.parts.create(small.id, data=b"four")
    assert client.uploads.cancel(small.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="cancelled"):
        client.uploads.parts.create(small.id, data=b"ab")
    with pytest.raises(openai.NotFoundError):
        client.uploads.cancel("upload_missing")
    with pytest.raises(openai.NotFoundError):
        client.uploads.cancel("../../etc")
    with pytest.raises(openai.BadRequestError) as purpose:
        client.uploads.create(bytes=1, filename="p", mime_type="text/plain", purpose="nonsense")  # type: ignore[arg-type]
    assert purpose.value.param == "purpose"
    with pytest.raises(openai.BadRequestError, match="larger than this server accepts"):
        client.uploads.create(
            bytes=1 << 50, filename="p", mime_type="text/plain", purpose="user_data"
        )


def test_files_and_vector_stores_say_when_they_expire(
    own_server: tuple[RunningServer, Path],
) -> None:
    server, data = own_server
    client = server.client()
    expiring = client.files.create(
        file=("a.txt", b"abc"),
        purpose="user_data",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )
    assert expiring.expires_at == expiring.created_at + 7200
    assert client.files.retrieve(expiring.id).expires_at == expiring.expires_at
    assert client.files.create(file=("b.txt", b"b"), purpose="user_data").expires_at is None
    for seconds in (10, 10**9):
        with pytest.raises(openai.BadRequestError) as bad:
            client.files.create(
                file=("c.txt", b"c"),
                purpose="user_data",
                expires_after={"anchor": "created_at", "seconds": seconds},
            )
        assert bad.value.param == "expires_after.seconds"
    # An upload's expires_after is its file's.
    upload = client.uploads.create(
        bytes=1,
        filename="u.txt",
        mime_type="text/plain",
        purpose="user_data",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    part = client.uploads.parts.create(upload.id, data=b"u")
    made = client.uploads.complete(upload.id, part_ids=[part.id]).file
    assert made is not None and made.expires_at == made.created_at + 3600

    store = client.vector_stores.create(
        name="x", expires_after={"anchor": "last_active_at", "days": 2}
    )
    assert store.expires_after is not None and store.expires_after.days == 2
    assert store.expires_at == store.last_active_at + 2 * 86400
    assert client.vector_stores.update(store.id, name="y").expires_after is not None  # unchanged
    assert client.vector_stores.update(store.id, expires_after=None).expires_at is None
    client.vector_stores.update(store.id, expires_after={"anchor": "last_active_at", "days": 1})
    # Three days without use (the catalog's clock moved back): expired, and unsearchable.
    with sqlite3.connect(data / "vector_stores.db") as db:
        db.execute(
            "UPDATE vector_stores SET last_active_at = ? WHERE id = ?",
            (int(time.time()) - 3 * 86400, store.id),
        )
    assert client.vector_stores.retrieve(store.id).status == "expired"
    with pytest.raises(openai.BadRequestError) as expired:
        client.vector_stores.search(store.id, query="anything")
    assert expired.value.code == "vector_store_expired"
    # A new policy counts from now: usable again.
    revived = client.vector_stores.update(
        store.id, expires_after={"anchor": "last_active_at", "days": 1}
    )
    assert revived.status == "completed"
    client.vector_stores.search(store.id, query="anything")


def test_the_sweep_removes_expired_files_from_disk_and_stores(tmp_path: Path) -> None:
    service = RetrievalService(Storage(tmp_path), 1 << 20, None, ChunkingOptions())
    try:
        keep = service.files.add(io.BytesIO(b"keep"), "keep.txt", "user_data")
        going = service.files.add(io.BytesIO(b"going"), "going.txt", "user_data", None, 3600)
        store = service.catalog.create_store("s", {})
        service.attach(store.id, going.id, {})
        assert service.sweep() == 0  # not yet
        assert service.files.get(going.id) is not None
        later = time.time() + 3601
        assert service.files.expired(later) == [going.id]
        assert service.sweep(later) == 1
        assert service.files.get(going.id) is None and service.files.get(keep.id) is not None
        assert service.files.local_path(going.id) is not None
        assert not service.files.local_path(going.id).exists()
        assert service.catalog.stores_with_file(going.id) == []
    finally:
        service.files.close()
        service.catalog.close()


def test_an_upload_an_hour_old_is_swept_with_its_parts(tmp_path: Path) -> None:
    service = RetrievalService(Storage(tmp_path), 1 << 20, None, ChunkingOptions())
    uploads: UploadStore = service.uploads
    try:
        upload = uploads.create("f.txt", 4, "text/plain", "user_data")
        uploads.add_part(upload, io.BytesIO(b"ab"))
        assert len(uploads.parts(upload)) == 1
        with pytest.raises(UploadError, match="larger than"):
            uploads.add_part(upload, io.BytesIO(b"abc"))  # 2 + 3 > 4
        assert uploads.sweep() == 0
        assert uploads.get(upload.id) is not None
        assert uploads.sweep(time.time() + 3601) == 1
        assert uploads.get(upload.id) is None
        assert not (tmp_path / "uploads" / upload.id).exists()
        assert PART_MAX_BYTES == 64 << 20
    finally:
        service.files.close()
        service.catalog.close()
