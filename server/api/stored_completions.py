"""OpenAI's stored chat completions: a chat completion made with `store: true` can be
listed, retrieved, given new metadata, deleted, and its request's messages read back.

Kept in memory per process (the runtime's `chat_completions`, bounded like the stored
responses); a replica of `hearth serve --ray` names itself in the ids it makes, so the
cluster's router sends these requests to the replica that holds the completion.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.body import read_json, validate_body
from server.api.errors import APIError
from server.api.listing import ListQuery, list_query, page
from server.api.openapi import documented
from server.chat.requests import ChatCompletionRequest, Metadata
from server.chat.response_store import StoredResponse
from server.runtime import Runtime


class StoredListQuery(ListQuery):
    limit: int | None = Field(None, ge=1, le=100)
    order: Literal["asc", "desc"] = "asc"
    model: str | None = None


class MessagesQuery(ListQuery):
    limit: int | None = Field(None, ge=1, le=100)
    order: Literal["asc", "desc"] = "asc"


class UpdateStored(BaseModel):
    model_config = ConfigDict(
        extra="allow", json_schema_extra={"examples": [{"metadata": {"run": "nightly"}}]}
    )
    metadata: Metadata | None


def remember(runtime: Runtime, req: ChatCompletionRequest, body: dict[str, Any]) -> None:
    """Keep a finished completion with its request's messages and metadata."""
    stored = {**body, "metadata": dict(req.metadata or {})}
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    runtime.chat_completions.put(body["id"], StoredResponse(stored, messages, len(messages)))


def _stored(request: Request) -> tuple[Runtime, str, StoredResponse]:
    runtime: Runtime = request.app.state.runtime
    completion_id = request.path_params["completion_id"]
    stored = runtime.chat_completions.get(completion_id)
    if stored is None:
        raise APIError(
            404,
            f"No stored chat completion with id '{completion_id}' (only completions made with "
            "store: true are kept).",
            param="completion_id",
            code="not_found",
        )
    return runtime, completion_id, stored


def _metadata_filter(request: Request) -> dict[str, str]:
    """`metadata[key]=value` query parameters, as OpenAI's list takes them."""
    return {
        key[len("metadata[") : -1]: value
        for key, value in request.query_params.multi_items()
        if key.startswith("metadata[") and key.endswith("]")
    }


@documented("List stored chat completions", query=StoredListQuery)
async def list_stored(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    query = list_query(request, StoredListQuery)
    wanted = _metadata_filter(request)
    bodies = [
        s.body
        for s in runtime.chat_completions.values()
        if (query.model is None or s.body["model"] == query.model)
        and all(s.body["metadata"].get(k) == v for k, v in wanted.items())
    ]
    bodies.sort(key=lambda b: b["created"], reverse=query.order == "desc")
    return JSONResponse(page(bodies, query, default_limit=20))


@documented("Retrieve a stored chat completion")
async def retrieve_stored(request: Request) -> Response:
    return JSONResponse(_stored(request)[2].body)


@documented("Update a stored chat completion's metadata", body=UpdateStored)
async def update_stored(request: Request) -> Response:
    runtime, completion_id, stored = _stored(request)
    body = validate_body(UpdateStored, await read_json(request))
    updated = {**stored.body, "metadata": dict(body.metadata or {})}
    runtime.chat_completions.put(
        completion_id, StoredResponse(updated, stored.items, stored.n_inputs)
    )
    return JSONResponse(updated)


@documented("Delete a stored chat completion")
async def delete_stored(request: Request) -> Response:
    runtime, completion_id, _ = _stored(request)
    runtime.chat_completions.delete(completion_id)
    return JSONResponse({"object": "chat.completion.deleted", "id": completion_id, "deleted": True})


@documented("List a stored chat completion's messages", query=MessagesQuery)
async def list_stored_messages(request: Request) -> Response:
    _, completion_id, stored = _stored(request)
    query = list_query(request, MessagesQuery)
    messages = []
    for i, message in enumerate(stored.items):
        content = message.get("content")
        text = content if isinstance(content, str) or content is None else None
        messages.append(
            {
                "id": f"{completion_id}-{i}",
                **message,
                "content": text,
                # Array content as sent (text and image parts), as OpenAI returns it.
                "content_parts": None if text is not None or content is None else content,
            }
        )
    if query.order == "desc":
        messages.reverse()
    return JSONResponse(page(messages, query, default_limit=20))
