"""OpenAI's Batch API: /v1/batches create, retrieve, cancel and list. The input file is
uploaded with purpose "batch"; its requests run in the background (server/batch/runner.py)
and their answers come back as files of the Files API (output_file_id, error_file_id)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.body import read_json, validate_body
from server.api.errors import APIError, bad_request
from server.api.listing import ListQuery, list_query, page
from server.api.openapi import documented
from server.batch.records import ENDPOINTS, Batch
from server.batch.runner import BatchRunner
from server.chat.requests import Metadata
from server.ids import new_id

# What cancel can stop; after these, the batch is (being) finished.
CANCELLABLE = ("validating", "in_progress")


class CreateBatch(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "input_file_id": "file-abc123",
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                }
            ]
        },
    )
    input_file_id: str = Field(min_length=1, max_length=200)
    endpoint: str
    completion_window: str
    metadata: Metadata | None = None


class BatchListQuery(ListQuery):
    limit: int | None = Field(None, ge=1, le=100)


def _runner(request: Request) -> BatchRunner:
    return request.app.state.runtime.batches


def _require(request: Request) -> Batch:
    batch_id = request.path_params["batch_id"]
    batch = _runner(request).get(batch_id)
    if batch is None:
        raise APIError(404, f"No batch found with id '{batch_id}'.", code="not_found")
    return batch


@documented("Create a batch", body=CreateBatch, creates="batch_id")
async def create_batch(request: Request) -> Response:
    body = validate_body(CreateBatch, await read_json(request))
    if body.endpoint not in ENDPOINTS:
        raise bad_request(
            f"Unsupported endpoint {body.endpoint!r}; expected one of {list(ENDPOINTS)}.",
            param="endpoint",
        )
    if body.completion_window != "24h":
        raise bad_request("completion_window must be '24h'.", param="completion_window")
    runtime = request.app.state.runtime
    stored = runtime.retrieval.files.get(body.input_file_id)
    if stored is None:
        raise APIError(404, f"No file found with id '{body.input_file_id}'.", param="input_file_id")
    if stored.purpose != "batch":
        raise bad_request(
            f"The input file must be uploaded with purpose 'batch', not {stored.purpose!r}.",
            param="input_file_id",
        )
    batch = Batch(
        id=new_id("batch_"),
        endpoint=body.endpoint,
        input_file_id=body.input_file_id,
        completion_window=body.completion_window,
        metadata=dict(body.metadata) if body.metadata is not None else None,
        created_at=int(time.time()),
        created_ns=time.time_ns(),
    )
    _runner(request).submit(batch)
    return JSONResponse(batch.wire())


@documented("Retrieve a batch")
async def retrieve_batch(request: Request) -> Response:
    return JSONResponse(_require(request).wire())


@documented("Cancel a batch (requests already running finish; the rest are not run)")
async def cancel_batch(request: Request) -> Response:
    batch = _require(request)
    if batch.status not in CANCELLABLE:
        raise APIError(
            409, f"Cannot cancel a batch that is {batch.status}.", code="batch_not_cancellable"
        )
    return JSONResponse(_runner(request).cancel(batch).wire())


@documented("List batches, newest first", query=BatchListQuery)
async def list_batches(request: Request) -> Response:
    query = list_query(request, BatchListQuery)
    batches = await asyncio.to_thread(_runner(request).all)  # a file each: off the loop
    items: list[dict[str, Any]] = [b.wire() for b in batches]
    if query.order == "asc":
        items.reverse()
    return JSONResponse(page(items, query, default_limit=20))
