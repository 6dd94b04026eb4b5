"""OpenAI Files API through the official client: upload, list, page, read, delete, limits."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from retrieval.files import sanitize_filename
from tests.conftest import RunningServer, start_server, stop_server


@pytest.fixture(scope="module")
def files_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("files")
    config = tmp / "hearth.toml"
    config.write_text("[retrieval]\nmax_upload_mb = 1\n")
    s = start_server(tmp, "--config", str(config), "--data-dir", str(tmp / "data"))
    s.data_dir = tmp / "data"  # type: ignore[attr-defined]
    yield s
    stop_server(s)


def test_upload_retrieve_content_delete(files_server: RunningServer) -> None:
    client = files_server.client()
    body = b"Hearth keeps your documents local.\n"
    f = client.files.create(file=("notes.txt", io.BytesIO(body)), purpose="assistants")
    assert f.id.startswith("file-") and f.object == "file"
    assert f.bytes == len(body) and f.filename == "notes.txt" and f.purpose == "assistants"
    assert client.files.retrieve(f.id).id == f.id
    assert client.files.content(f.id).read() == body
    assert f.id in [x.id for x in client.files.list()]
    deleted = client.files.delete(f.id)
    assert deleted.deleted and deleted.id == f.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(f.id)


def test_pagination_and_purpose_filter(files_server: RunningServer) -> None:
    client = files_server.client()
    ids = [
        client.files.create(file=(f"p{i}.txt", io.BytesIO(b"x")), purpose="user_data").id
        for i in range(5)
    ]
    first = client.files.list(purpose="user_data", limit=2)
    assert len(first.data) == 2 and first.has_more
    everything = [f.id for f in client.files.list(purpose="user_data", limit=2)]  # auto-pages
    assert set(ids) <= set(everything) and len(everything) == len(set(everything))
    assert all(f.purpose == "user_data" for f in client.files.list(purpose="user_data"))


def test_filename_is_sanitised(files_server: RunningServer) -> None:
    client = files_server.client()
    f = client.files.create(file=("../../etc/passwd", io.BytesIO(b"data")), purpose="assistants")
    assert f.filename == "passwd"
    assert sanitize_filename("..\\..\\win\\boot.ini") == "boot.ini"
    assert sanitize_filename("re\x07port\n.pdf") == "report.pdf"
    assert sanitize_filename("/") == "upload"
    stored = list((files_server.data_dir / "files").iterdir())  # type: ignore[attr-defined]
    assert all(p.parent.name == "files" and p.name.startswith("file-") for p in stored)


def test_size_limit_is_413(files_server: RunningServer) -> None:
    r = httpx.post(
        f"{files_server.base_url}/files",
        data={"purpose": "assistants"},
        files={"file": ("big.bin", b"x" * (2 << 20))},
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "file_too_large"


@pytest.mark.parametrize(
    ("data", "files", "param"),
    [
        ({"purpose": "assistants"}, None, "file"),
        ({}, {"file": ("a.txt", b"x")}, "purpose"),
        ({"purpose": "wizardry"}, {"file": ("a.txt", b"x")}, "purpose"),
    ],
)
def test_bad_uploads(
    files_server: RunningServer, data: dict, files: dict | None, param: str
) -> None:
    r = httpx.post(f"{files_server.base_url}/files", data=data, files=files)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_bad_ids_and_cursors(files_server: RunningServer) -> None:
    r = httpx.get(f"{files_server.base_url}/files/file-nope/content")
    assert r.status_code == 404 and r.json()["error"]["code"] == "file_not_found"
    r = httpx.get(f"{files_server.base_url}/files", params={"after": "file-nope"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "after"
    r = httpx.get(f"{files_server.base_url}/files", params={"limit": "0"})
    assert r.status_code == 400


def test_files_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_server(tmp_path, "--data-dir", str(data))
    try:
        f = first.client().files.create(
            file=("keep.md", io.BytesIO(b"# Kept")), purpose="assistants"
        )
    finally:
        stop_server(first)
    second = start_server(tmp_path, "--data-dir", str(data))
    try:
        assert second.client().files.content(f.id).read() == b"# Kept"
    finally:
        stop_server(second)
