"""OpenAI's Conversations API: /v1/conversations and its items. A response created with
`conversation` reads the conversation's items as its history and adds its input and
output to them (responses/handlers.py); the store is server/chat/conversation_store.py."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.body import read_json, validate_body
from server.api.errors import APIError
from server.api.listing import ListQuery, list_query, page
from server.api.openapi import documented
from server.api.responses.wire import input_item, input_messages, with_id
from server.chat.conversation_store import Conversation
from server.chat.requests import Metadata
from server.ids import new_id
from server.runtime import Runtime

# Items one request may add (OpenAI's limit).
MAX_ITEMS_PER_REQUEST = 20


class CreateConversation(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {"items": [{"type": "message", "role": "user", "content": "Hi"}], "metadata": {}}
            ]
        },
    )
    items: list[dict[str, Any]] | None = Field(None, max_length=MAX_ITEMS_PER_REQUEST)
    metadata: Metadata | None = None


class UpdateConversation(BaseModel):
    model_config = ConfigDict(extra="allow")
    metadata: Metadata


class AddItems(BaseModel):
    model_config = ConfigDict(extra="allow")
    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)


def conversation_object(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": conversation.id,
        "object": "conversation",
        "created_at": conversation.created_at,
        "metadata": conversation.metadata,
    }


def stored_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items as a conversation keeps them: checked as a response's input would be (400
    naming `items...`), each with an id, messages with typed content parts."""
    try:
        input_messages(items)
    except APIError as e:
        if e.param and e.param.startswith("input"):
            e.param = "items" + e.param.removeprefix("input")
        raise
    return [input_item(with_id(item)) for item in items]


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


@documented("Create a conversation", body=CreateConversation, creates="conversation_id")
async def create_conversation(request: Request) -> Response:
    runtime = _runtime(request)
    body = validate_body(CreateConversation, await read_json(request))
    items = stored_items(body.items or [])
    conversation = Conversation(new_id("conv_"), dict(body.metadata or {}), items)
    runtime.conversations.add(conversation)
    return JSONResponse(conversation_object(conversation))


@documented("Retrieve a conversation")
async def get_conversation(request: Request) -> Response:
    conversation = _runtime(request).conversations.require(request.path_params["conversation_id"])
    return JSONResponse(conversation_object(conversation))


@documented("Update a conversation's metadata", body=UpdateConversation)
async def update_conversation(request: Request) -> Response:
    conversation = _runtime(request).conversations.require(request.path_params["conversation_id"])
    body = validate_body(UpdateConversation, await read_json(request))
    conversation.metadata = dict(body.metadata)
    _runtime(request).conversations.changed(conversation)
    return JSONResponse(conversation_object(conversation))


@documented("Delete a conversation (its items too)")
async def delete_conversation(request: Request) -> Response:
    runtime = _runtime(request)
    conversation_id = request.path_params["conversation_id"]
    if not runtime.conversations.delete(conversation_id):
        runtime.conversations.require(conversation_id)  # the 404
    return JSONResponse({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


@documented("Add items to a conversation", body=AddItems)
async def add_items(request: Request) -> Response:
    runtime = _runtime(request)
    conversation = runtime.conversations.require(request.path_params["conversation_id"])
    items = stored_items(validate_body(AddItems, await read_json(request)).items)
    runtime.conversations.extend(conversation, items)
    return JSONResponse(page(items, ListQuery(order="asc")))


@documented("List a conversation's items", query=ListQuery)
async def list_items(request: Request) -> Response:
    conversation = _runtime(request).conversations.require(request.path_params["conversation_id"])
    query = list_query(request, ListQuery)
    items = list(conversation.items)
    if query.order == "desc":
        items.reverse()
    return JSONResponse(page(items, query, default_limit=20))


def _item(conversation: Conversation, item_id: str) -> dict[str, Any]:
    item = conversation.item(item_id)
    if item is None:
        raise APIError(
            404, f"Item with id '{item_id}' not found.", param="item_id", code="item_not_found"
        )
    return item


@documented("Retrieve a conversation item")
async def get_item(request: Request) -> Response:
    conversation = _runtime(request).conversations.require(request.path_params["conversation_id"])
    return JSONResponse(_item(conversation, request.path_params["item_id"]))


@documented("Delete a conversation item")
async def delete_item(request: Request) -> Response:
    runtime = _runtime(request)
    conversation = runtime.conversations.require(request.path_params["conversation_id"])
    item_id = request.path_params["item_id"]
    _item(conversation, item_id)
    runtime.conversations.remove_item(conversation, item_id)
    return JSONResponse(conversation_object(conversation))
