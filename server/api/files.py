"""OpenAI's Files API: POST/GET /v1/files, GET/DELETE /v1/files/{id}, GET .../content."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from retrieval.files import FileStore, FileTooLarge, StoredFile
from server.api.body import BodyTooLarge
from server.api.errors import APIError, bad_request
from server.api.listing import ListQuery, list_query, page
from server.api.openapi import documented

PURPOSES = {"assistants", "user_data", "batch", "fine-tune", "vision", "evals"}
UPLOAD_FORM = {
    "type": "object",
    "required": ["file", "purpose"],
    "properties": {
        "file": {"type": "string", "format": "binary"},
        "purpose": {"type": "string", "enum": sorted(PURPOSES)},
        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
        "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000},
    },
}
MAX_FILENAME_CHARS = 1024
# OpenAI's bounds for expires_after.seconds: an hour to 30 days.
EXPIRY_SECONDS = (3600, 30 * 86400)


class FileListQuery(ListQuery):
    purpose: str | None = None


def file_object(f: StoredFile) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "expires_at": f.expires_at,
        "status_details": None,
    }


def _store(request: Request) -> FileStore:
    return request.app.state.runtime.retrieval.files


def _not_found(file_id: str) -> APIError:
    return APIError(
        404,
        f"No such File object: {file_id}",
        param="id",
        code="file_not_found",
        type="invalid_request_error",
    )


@documented("Upload a file", form=UPLOAD_FORM, creates="file_id")
async def create_file(request: Request) -> Response:
    store = _store(request)
    # BodyLimit (body.py) stops the upload at the limit as it arrives; the file itself is
    # measured again as it is written.
    form = await request.form(max_files=1, max_fields=16)
    try:
        upload = form_file(form, "file")
        purpose = form.get("purpose")
        if not isinstance(purpose, str) or not purpose:
            raise bad_request(
                "Missing required parameter: 'purpose'.",
                param="purpose",
                code="missing_required_parameter",
            )
        check_purpose(purpose)
        if len(upload.filename or "") > MAX_FILENAME_CHARS:
            raise bad_request(
                f"The file name is longer than {MAX_FILENAME_CHARS} characters.", param="file"
            )
        expires_after = expiry_seconds(
            form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
        )
        try:
            stored = await asyncio.to_thread(
                store.add, upload.file, upload.filename or "", purpose, None, expires_after
            )
        except FileTooLarge:
            raise BodyTooLarge(store.max_bytes, upload=True) from None
    finally:
        await form.close()
    return JSONResponse(file_object(stored))


def form_file(form: FormData, name: str) -> UploadFile:
    """The file part `name` of a multipart form, or the 400 OpenAI answers without it."""
    part = form.get(name)
    if not isinstance(part, UploadFile):
        raise bad_request(
            f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
        )
    return part


def check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise bad_request(
            f"Invalid purpose {purpose!r}; expected one of {sorted(PURPOSES)}.", param="purpose"
        )


def expiry_seconds(anchor: Any, seconds: Any) -> int | None:
    """expires_after's seconds (None: the file stays until deleted); 400 unless it is
    OpenAI's shape: anchor "created_at", 3600 to 2592000 seconds."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise bad_request(
            "expires_after.anchor must be 'created_at'.", param="expires_after.anchor"
        )
    try:
        value = int(str(seconds))
    except ValueError:
        value = -1
    low, high = EXPIRY_SECONDS
    if not low <= value <= high:
        raise bad_request(
            f"expires_after.seconds must be an integer from {low} to {high}.",
            param="expires_after.seconds",
        )
    return value


@documented("List files", query=FileListQuery)
async def list_files(request: Request) -> Response:
    query = list_query(request, FileListQuery)
    files = _store(request).list(query.purpose, query.order)
    return JSONResponse(page([file_object(f) for f in files], query))


@documented("Retrieve a file's details")
async def retrieve_file(request: Request) -> Response:
    file_id = request.path_params["file_id"]
    stored = _store(request).get(file_id)
    if stored is None:
        raise _not_found(file_id)
    return JSONResponse(file_object(stored))


@documented("Download a file", returns="application/octet-stream")
async def file_content(request: Request) -> Response:
    store = _store(request)
    file_id = request.path_params["file_id"]
    stored = store.get(file_id)
    if stored is None:
        raise _not_found(file_id)
    path = store.local_path(file_id)
    if path is not None:
        return FileResponse(path, media_type="application/octet-stream", filename=stored.filename)
    # In a bucket: streamed through, a block at a time.
    source = await asyncio.to_thread(store.blobs.open, file_id)

    async def blocks() -> AsyncIterator[bytes]:
        try:
            while block := await asyncio.to_thread(source.read, 1 << 20):
                yield block
        finally:
            source.close()

    disposition = f"attachment; filename*=utf-8''{quote(stored.filename)}"
    return StreamingResponse(
        blocks(),
        media_type="application/octet-stream",
        headers={"content-disposition": disposition, "content-length": str(stored.bytes)},
    )


@documented("Delete a file (and take it out of every vector store)")
async def delete_file(request: Request) -> Response:
    file_id = request.path_params["file_id"]
    # Also takes the file out of every vector store that holds it.
    retrieval = request.app.state.runtime.retrieval
    if not await asyncio.to_thread(retrieval.delete_file, file_id):
        raise _not_found(file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})
