"""The endpoints: create (JSON or streamed), retrieve and delete."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import ServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.body import read_json, validate_body
from server.api.errors import APIError, bad_request
from server.api.listing import ListQuery, list_query, page
from server.api.logprobs import chat_logprobs
from server.api.openapi import documented
from server.api.responses.background import BackgroundResponses, BackgroundRun
from server.api.responses.output import LogprobFormat, ResponseBuilder, output_items, status_of
from server.api.responses.stream import error_events, stream_events
from server.api.responses.wire import (
    ResponsesRequest,
    chat_request,
    conversation_id,
    input_item,
    input_items,
    wants_logprobs,
    wants_search_results,
    with_id,
)
from server.api.sse import sse_response
from server.async_engine import GenerationStream
from server.chat.conversation_store import Conversation
from server.chat.generate import cancel_all, collect, start_streams
from server.chat.prepare import PreparedChat, prepare_chat
from server.chat.requests import ChatCompletionRequest
from server.chat.response_store import StoredResponse
from server.engine.logprobs import TokenLogprob
from server.llama.model import LlamaModel
from server.model_pool import Lease, LoadedModel
from server.runtime import Runtime


def conversation(runtime: Runtime, previous_response_id: str | None) -> list[dict[str, Any]]:
    """The items of the conversation a request continues (none without an id)."""
    if previous_response_id is None:
        return []
    previous = runtime.responses.get(previous_response_id)
    if previous is None:
        raise APIError(
            404,
            f"Previous response with id '{previous_response_id}' not found.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    if previous.body.get("status") in ("queued", "in_progress"):
        raise bad_request(
            f"Previous response '{previous_response_id}' is still being made (in the "
            "background); continue from it once it is done.",
            param="previous_response_id",
        )
    return previous.items


def history(
    runtime: Runtime, req: ResponsesRequest
) -> tuple[list[dict[str, Any]], Conversation | None]:
    """The items a request continues, from previous_response_id or from its conversation
    (then also returned, to be extended when the response is made)."""
    conversation_key = conversation_id(req)
    if conversation_key is None:
        return conversation(runtime, req.previous_response_id), None
    kept = runtime.conversations.require(conversation_key, param="conversation")
    return list(kept.items), kept


@dataclass
class StartedResponse:
    """A response whose generation has started: its streams, the builder of its response
    object, and `remember`, which stores a finished body for previous_response_id."""

    req: ResponsesRequest
    prepared: PreparedChat
    streams: list[GenerationStream]
    builder: ResponseBuilder
    remember: Callable[[dict[str, Any]], None]
    keep: Callable[[dict[str, Any]], None]  # stores the response as it stands (background)
    logprobs: LogprobFormat | None = None  # when the request asked for them

    def events(self) -> AsyncIterator[ServerSentEvent]:
        return stream_events(
            self.builder,
            self.streams,
            self.prepared,
            self.remember,
            self.logprobs,
            wants_search_results(self.req),
        )


async def start_response(runtime: Runtime, req: ResponsesRequest, lease: Lease) -> StartedResponse:
    """Translate, prepare and queue one response on the leased model (errors: APIError or
    the chat service's, before anything is queued)."""
    earlier, kept = history(runtime, req)
    new_items = [with_id(item) for item in input_items(req)]
    if kept is not None:  # a conversation already full fails now, not after the answer
        runtime.conversations.check_room(kept, new_items)
    chat: ChatCompletionRequest = chat_request(req, earlier)
    model = lease.model
    prepared = await prepare_chat(model, chat)
    if req.truncation == "auto":
        chat, prepared = await fit_context(model, chat, prepared)
    logprobs = (chat.top_logprobs or 0) if chat.logprobs else None
    streams = start_streams(
        model, chat, [prepared.prompt], [prepared.max_tokens], logprobs, prepared.grammar
    )
    builder = ResponseBuilder(req, prepared.model_id)
    history_items = [*earlier, *new_items]

    def keep(body: dict[str, Any]) -> None:
        runtime.responses.put(builder.id, StoredResponse(body, history_items, len(history_items)))

    def remember(body: dict[str, Any]) -> None:
        outputs = [o for o in body["output"] if o["type"] != "file_search_call"]
        if req.store:
            items = [*history_items, *outputs]
            runtime.responses.put(builder.id, StoredResponse(body, items, len(history_items)))
        if kept is not None:  # the turn joins its conversation (past its bound if need be)
            runtime.conversations.extend(
                kept, [input_item(item) for item in new_items] + outputs, force=True
            )

    text_logprobs = partial(_text_logprobs, model.model) if wants_logprobs(req) else None
    return StartedResponse(req, prepared, streams, builder, remember, keep, text_logprobs)


async def fit_context(
    model: LoadedModel, chat: ChatCompletionRequest, prepared: PreparedChat
) -> tuple[ChatCompletionRequest, PreparedChat]:
    """truncation "auto": a conversation longer than the context loses its oldest items
    (system messages stay, and a tool result goes with the call before it) until prompt
    and output fit; the fewest are dropped (found by bisection: each try renders the whole
    prompt). Still too long with only the last message left: the usual 400."""
    room = model.engine.context_length

    def fits(p: PreparedChat) -> bool:
        return len(p.prompt) + p.max_tokens <= room

    if fits(prepared):
        return chat, prepared
    turns = _turn_starts(chat)
    tried: dict[int, tuple[ChatCompletionRequest, PreparedChat]] = {}

    async def without(k: int) -> tuple[ChatCompletionRequest, PreparedChat]:
        """The request with its first k turns dropped."""
        if k not in tried:
            cut = turns[k]
            kept = [m for i, m in enumerate(chat.messages) if _is_system(m) or i >= cut]
            shorter = chat.model_copy(update={"messages": kept})
            tried[k] = (shorter, await prepare_chat(model, shorter))
        return tried[k]

    # Dropping len(turns) - 1 turns leaves only the last one.
    cut = await fewest_to_drop(len(turns) - 1, without, fits)
    if cut is None:
        return chat, prepared  # the engine's context_length_exceeded says why
    return await without(cut)


async def fewest_to_drop(
    most: int,
    without: Callable[[int], Awaitable[tuple[ChatCompletionRequest, PreparedChat]]],
    fits: Callable[[PreparedChat], bool],
) -> int | None:
    """The fewest (1..most) leading parts whose removal makes `without(k)` fit, found by
    bisection (fitting grows with k; each try renders a whole prompt); None if even
    `most` is not enough."""
    low, high = 1, most
    if high < 1 or not fits((await without(high))[1]):
        return None
    while low < high:
        middle = (low + high) // 2
        if fits((await without(middle))[1]):
            high = middle
        else:
            low = middle + 1
    return low


def _is_system(message: Any) -> bool:
    return message.role in ("system", "developer")


def _turn_starts(chat: ChatCompletionRequest) -> list[int]:
    """Where each droppable turn begins: every message but system ones and tool results
    (which stay with the call before them)."""
    return [
        i
        for i, m in enumerate(chat.messages)
        if not _is_system(m) and m.role not in ("tool", "function")
    ]


def _text_logprobs(model: LlamaModel, items: list[TokenLogprob]) -> list[dict[str, Any]]:
    """output_text.logprobs: the entries of a chat completion's logprobs.content."""
    return chat_logprobs(model, items)["content"]


@documented("Create a response", body=ResponsesRequest, creates="response_id")
async def create_response(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = validate_body(ResponsesRequest, await read_json(request))
    if req.background and not req.store:
        raise bad_request("A background response is stored: send store=true.", param="store")
    history(runtime, req)  # an unknown id fails before loading
    lease = await runtime.models.acquire(req.model)
    with lease:
        started = await start_response(runtime, req, lease)
        if req.background:
            return _in_background(request, started, lease.hand_over())
        if req.stream:
            release = lease.hand_over()
            return sse_response(
                started.events(),
                on_close=lambda: (cancel_all(started.streams), release()),
                on_error=error_events,
            )
        (result,) = await collect(started.streams, request.is_disconnected)
    prepared = started.prepared
    output = output_items(
        result,
        prepared.tools is not None,
        prepared.sources,
        prepared.query,
        started.logprobs,
        wants_search_results(req),
    )
    status = status_of(result.finish_reason)  # a call cut short: incomplete too
    body = started.builder.body(status, output, result)
    started.remember(body)
    return JSONResponse(body)


@documented("Count a response's input tokens (without making it)", body=ResponsesRequest)
async def count_input_tokens(request: Request) -> Response:
    """The tokens the prompt of a response with this body would have: its input after the
    history (previous_response_id or conversation), instructions, tools and retrieved
    sources, through the model's chat template; with truncation "auto", after it."""
    runtime: Runtime = request.app.state.runtime
    body = await read_json(request)
    if isinstance(body, dict):
        body.setdefault("input", [])  # the history alone may be what is counted
    req = validate_body(ResponsesRequest, body)
    earlier, _ = history(runtime, req)
    chat = chat_request(req, earlier)
    with await runtime.models.acquire(req.model) as model:
        prepared = await prepare_chat(model, chat)
        if req.truncation == "auto":
            _, prepared = await fit_context(model, chat, prepared)
    return JSONResponse({"object": "response.input_tokens", "input_tokens": len(prepared.prompt)})


def _in_background(
    request: Request, started: StartedResponse, release: Callable[[], None]
) -> Response:
    """Start a background response: it is queued now, made by a task of its own."""
    queued = started.builder.body("queued", [])
    started.keep(queued)
    run = BackgroundRun(started.builder, started.streams, started.keep, release=release)
    _background(request).start(run, started.events())
    if started.req.stream:  # the events as they come; leaving does not stop the response
        return sse_response(run.follow(), on_close=_nothing, on_error=error_events)
    return JSONResponse(queued)


def _nothing() -> None:
    """A reader of a background response leaving changes nothing for the response."""


def _background(request: Request) -> BackgroundResponses:
    return request.app.state.background_responses


class RetrieveQuery(BaseModel):
    model_config = ConfigDict(extra="allow")
    stream: bool = False
    starting_after: int = Field(-1, ge=-1)


@documented("Retrieve a stored response (or stream a background one's events)", query=RetrieveQuery)
async def get_response(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    response_id = request.path_params["response_id"]
    query = validate_body(RetrieveQuery, dict(request.query_params))
    if query.stream:
        run = _background(request).get(response_id)
        if run is None:
            if runtime.responses.get(response_id) is None:
                raise _not_found(response_id)
            raise bad_request(
                "Only a background response can be streamed again (and only while its "
                "events are kept: the latest 64 finished ones).",
                param="stream",
            )
        return sse_response(
            run.follow(query.starting_after), on_close=_nothing, on_error=error_events
        )
    stored = runtime.responses.get(response_id)
    if stored is None:
        raise _not_found(response_id)
    return JSONResponse(stored.body)


@documented("Cancel a background response")
async def cancel_response(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    response_id = request.path_params["response_id"]
    background = _background(request)
    if background.cancel(response_id):
        await background.wait(response_id)  # its stored response now says cancelled
    stored = runtime.responses.get(response_id)
    if stored is None:
        raise _not_found(response_id)
    if not stored.body.get("background"):
        raise bad_request("Only a background response can be cancelled.", param="response_id")
    return JSONResponse(stored.body)


@documented("Delete a stored response")
async def delete_response(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    response_id = request.path_params["response_id"]
    if not runtime.responses.delete(response_id):
        raise _not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


class InputItemsQuery(ListQuery):
    limit: int | None = Field(None, ge=1, le=100)


@documented("List a stored response's input items", query=InputItemsQuery)
async def list_input_items(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    response_id = request.path_params["response_id"]
    stored = runtime.responses.get(response_id)
    if stored is None:
        raise _not_found(response_id)
    query = list_query(request, InputItemsQuery)
    items = [input_item(item) for item in stored.items[: stored.n_inputs]]
    if query.order == "desc":
        items.reverse()
    return JSONResponse(page(items, query, default_limit=20))


def _not_found(response_id: str) -> APIError:
    return APIError(
        404, f"Response with id '{response_id}' not found.", param="response_id", code="not_found"
    )
