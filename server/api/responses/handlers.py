"""The endpoints: create (JSON or streamed), retrieve and delete."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.body import read_json, validate_body
from server.api.errors import APIError
from server.api.openapi import documented
from server.api.responses.output import ResponseBuilder, output_items, status_of
from server.api.responses.stream import error_events, stream_events
from server.api.responses.wire import ResponsesRequest, chat_request, input_items
from server.api.sse import sse_response
from server.chat.generate import cancel_all, collect, start_streams
from server.chat.prepare import prepare_chat
from server.chat.requests import ChatCompletionRequest
from server.chat.response_store import StoredResponse
from server.model_pool import Lease, LoadedModel
from server.runtime import Runtime


@documented("Create a response", body=ResponsesRequest, creates="response_id")
async def create_response(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = validate_body(ResponsesRequest, await read_json(request))
    store = runtime.responses
    history: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        previous = store.get(req.previous_response_id)
        if previous is None:
            raise APIError(
                404,
                f"Previous response with id '{req.previous_response_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        history = previous.items
    chat = chat_request(req, history)
    lease = await runtime.models.acquire(req.model)
    with lease as model:
        return await _respond(request, model, lease, req, chat, history)


async def _respond(
    request: Request,
    model: LoadedModel,
    lease: Lease,
    req: ResponsesRequest,
    chat: ChatCompletionRequest,
    history: list[dict[str, Any]],
) -> Response:
    store = request.app.state.runtime.responses
    prepared = await prepare_chat(model, chat)
    streams = start_streams(
        model, chat, [prepared.prompt], [prepared.max_tokens], None, prepared.grammar
    )
    builder = ResponseBuilder(req, prepared.model_id)
    history_items = [*history, *input_items(req)]

    def remember(body: dict[str, Any]) -> None:
        if req.store:
            items = [
                *history_items,
                *(o for o in body["output"] if o["type"] != "file_search_call"),
            ]
            store.put(builder.id, StoredResponse(body, items))

    if req.stream:
        events = stream_events(builder, streams, prepared, remember)
        release = lease.hand_over()
        return sse_response(
            events, on_close=lambda: (cancel_all(streams), release()), on_error=error_events
        )
    (result,) = await collect(streams, request.is_disconnected)
    output = output_items(result, prepared.tools is not None, prepared.sources, prepared.query)
    called = any(o["type"] == "function_call" for o in output)
    status = "completed" if called else status_of(result.finish_reason)
    body = builder.body(status, output, result)
    remember(body)
    return JSONResponse(body)


@documented("Retrieve a stored response")
async def get_response(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    stored = runtime.responses.get(request.path_params["response_id"])
    if stored is None:
        raise _not_found(request.path_params["response_id"])
    return JSONResponse(stored.body)


@documented("Delete a stored response")
async def delete_response(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    response_id = request.path_params["response_id"]
    if not runtime.responses.delete(response_id):
        raise _not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


def _not_found(response_id: str) -> APIError:
    return APIError(
        404, f"Response with id '{response_id}' not found.", param="response_id", code="not_found"
    )
