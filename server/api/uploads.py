"""OpenAI's Uploads API: a large file in parts. POST /v1/uploads begins one, .../parts adds
a part (multipart field `data`), .../complete joins the parts in the order given into a
File of the Files API, .../cancel gives up. The parts live in retrieval/uploads.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from retrieval.uploads import Upload, UploadError, UploadStore
from server.api.body import read_json, validate_body
from server.api.errors import APIError, bad_request
from server.api.files import (
    EXPIRY_SECONDS,
    MAX_FILENAME_CHARS,
    check_purpose,
    file_object,
    form_file,
)
from server.api.openapi import documented

PART_FORM = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string", "format": "binary"}},
}


class FileExpiry(BaseModel):
    anchor: Literal["created_at"]
    seconds: int = Field(ge=EXPIRY_SECONDS[0], le=EXPIRY_SECONDS[1])


class CreateUpload(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "bytes": 2147483648,
                    "filename": "training_examples.jsonl",
                    "mime_type": "text/jsonl",
                    "purpose": "user_data",
                }
            ]
        },
    )
    bytes: int = Field(ge=0)
    filename: str = Field(min_length=1, max_length=MAX_FILENAME_CHARS)
    mime_type: str = Field(min_length=1, max_length=255)
    purpose: str
    expires_after: FileExpiry | None = None


class CompleteUpload(BaseModel):
    model_config = ConfigDict(extra="allow")
    part_ids: list[str] = Field(max_length=10_000)
    md5: str | None = Field(None, max_length=64)


def _store(request: Request) -> UploadStore:
    return request.app.state.runtime.retrieval.uploads


def _require(request: Request) -> Upload:
    upload_id = request.path_params["upload_id"]
    upload = _store(request).get(upload_id)
    if upload is None:
        raise APIError(404, f"No upload found with id '{upload_id}'.", param="upload_id")
    return upload


def upload_object(request: Request, upload: Upload) -> dict[str, Any]:
    stored = None
    if upload.file_id is not None:
        stored = request.app.state.runtime.retrieval.files.get(upload.file_id)
    return {
        "id": upload.id,
        "object": "upload",
        "bytes": upload.bytes,
        "created_at": upload.created_at,
        "expires_at": upload.expires_at,
        "filename": upload.filename,
        "purpose": upload.purpose,
        "status": upload.status_at(time.time()),
        "file": file_object(stored) if stored is not None else None,
    }


async def _done(request: Request, work: Any, *args: Any) -> Upload:
    try:
        return await asyncio.to_thread(work, *args)
    except UploadError as e:
        raise bad_request(str(e)) from None


@documented("Begin an upload in parts", body=CreateUpload, creates="upload_id")
async def create_upload(request: Request) -> Response:
    body = validate_body(CreateUpload, await read_json(request))
    check_purpose(body.purpose)
    seconds = body.expires_after.seconds if body.expires_after is not None else None
    try:
        upload = await asyncio.to_thread(
            _store(request).create,
            body.filename,
            body.bytes,
            body.mime_type,
            body.purpose,
            seconds,
        )
    except UploadError as e:
        raise bad_request(str(e), param="bytes") from None
    return JSONResponse(upload_object(request, upload))


@documented("Add a part to an upload", form=PART_FORM)
async def add_part(request: Request) -> Response:
    upload = _require(request)
    form = await request.form(max_files=1, max_fields=4)
    try:
        data = form_file(form, "data")
        part = await _done(request, _store(request).add_part, upload, data.file)
    finally:
        await form.close()
    return JSONResponse(
        {
            "id": part.id,
            "object": "upload.part",
            "created_at": part.created_at,
            "upload_id": part.upload_id,
        }
    )


@documented("Complete an upload: its parts become a file", body=CompleteUpload)
async def complete_upload(request: Request) -> Response:
    upload = _require(request)
    body = validate_body(CompleteUpload, await read_json(request))
    done = await _done(request, _store(request).complete, upload, body.part_ids, body.md5)
    return JSONResponse(upload_object(request, done))


@documented("Cancel an upload")
async def cancel_upload(request: Request) -> Response:
    upload = _require(request)
    cancelled = await _done(request, _store(request).cancel, upload)
    return JSONResponse(upload_object(request, cancelled))
