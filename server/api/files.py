"""OpenAI's Files API: POST/GET /v1/files, GET/DELETE /v1/files/{id}, GET .../content."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from retrieval.files import FileStore, FileTooLarge, StoredFile
from server.api.errors import APIError, bad_request

PURPOSES = {"assistants", "user_data", "batch", "fine-tune", "vision", "evals"}


def file_object(f: StoredFile) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def _store(request: Request) -> FileStore:
    return request.app.state.retrieval.files


def _not_found(file_id: str) -> APIError:
    return APIError(
        404,
        f"No such File object: {file_id}",
        param="id",
        code="file_not_found",
        type="invalid_request_error",
    )


def _too_large(store: FileStore) -> APIError:
    return APIError(
        413,
        f"File too large: the limit is {store.max_bytes >> 20} MiB.",
        param="file",
        code="file_too_large",
    )


def page(items: list[dict[str, Any]], request: Request, default_limit: int = 10000) -> dict:
    """OpenAI's cursor pagination: limit, after (an id), has_more, first_id, last_id."""
    try:
        limit = int(request.query_params.get("limit", default_limit))
    except ValueError:
        raise bad_request("limit must be an integer.", param="limit") from None
    if not 1 <= limit <= 10000:
        raise bad_request("limit must be between 1 and 10000.", param="limit")
    after = request.query_params.get("after")
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise bad_request(f"No object with id {after!r} to continue after.", param="after")
        items = items[ids.index(after) + 1 :]
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(items) > limit,
    }


async def create_file(request: Request) -> Response:
    store = _store(request)
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > store.max_bytes + (1 << 16):
        raise _too_large(store)
    form = await request.form(max_files=1, max_fields=16)
    try:
        upload = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise bad_request(
                "Missing required parameter: 'file'.",
                param="file",
                code="missing_required_parameter",
            )
        if not isinstance(purpose, str) or not purpose:
            raise bad_request(
                "Missing required parameter: 'purpose'.",
                param="purpose",
                code="missing_required_parameter",
            )
        if purpose not in PURPOSES:
            raise bad_request(
                f"Invalid purpose {purpose!r}; expected one of {sorted(PURPOSES)}.", param="purpose"
            )
        try:
            stored = await asyncio.to_thread(store.add, upload.file, upload.filename or "", purpose)
        except FileTooLarge:
            raise _too_large(store) from None
    finally:
        await form.close()
    return JSONResponse(file_object(stored))


async def list_files(request: Request) -> Response:
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_request("order must be 'asc' or 'desc'.", param="order")
    files = _store(request).list(request.query_params.get("purpose"), order)
    return JSONResponse(page([file_object(f) for f in files], request))


async def retrieve_file(request: Request) -> Response:
    file_id = request.path_params["file_id"]
    stored = _store(request).get(file_id)
    if stored is None:
        raise _not_found(file_id)
    return JSONResponse(file_object(stored))


async def file_content(request: Request) -> Response:
    store = _store(request)
    file_id = request.path_params["file_id"]
    stored = store.get(file_id)
    if stored is None:
        raise _not_found(file_id)
    return FileResponse(
        store.path(file_id), media_type="application/octet-stream", filename=stored.filename
    )


async def delete_file(request: Request) -> Response:
    file_id = request.path_params["file_id"]
    # Also takes the file out of every vector store that holds it.
    if not request.app.state.retrieval.delete_file(file_id):
        raise _not_found(file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})
