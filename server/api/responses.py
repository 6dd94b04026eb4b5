"""POST /v1/responses (OpenAI's Responses API), GET and DELETE /v1/responses/{id}.

A Responses request is translated into a chat request and runs through the same path as
/v1/chat/completions (template, prefix cache, grammar, tools, retrieval); what differs is
the wire shape: input items in, output items out, and typed stream events. Supported:
text and message inputs, `instructions`, function tools and their call / output items,
`text.format` (JSON object or schema), `file_search` over Hearth's vector stores (with
file citations), `previous_response_id` over responses kept in memory, streaming.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sse_starlette.sse import ServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from retrieval.augmentation import latest_user_text
from retrieval.store import Hit
from server.api.chat import prepare_chat
from server.api.errors import APIError, bad_request, parse_json_body, validate_body
from server.api.generation import (
    ChoiceResult,
    cancel_all,
    check_model,
    collect,
    merged,
    start_streams,
)
from server.api.schemas import ChatCompletionRequest
from server.api.sse import dumps, sse_response
from server.api.tools import AnswerStream, parse_answer
from server.engine.request import FinishReason
from server.runtime import Runtime

# Responses kept for previous_response_id and GET, newest last (in memory, per process).
MAX_STORED = 256


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    stream: bool = False
    previous_response_id: str | None = None
    store: bool = True
    metadata: dict[str, Any] | None = None
    user: str | None = None


@dataclass
class StoredResponse:
    body: dict[str, Any]
    items: list[dict[str, Any]]  # the whole conversation as input items, outputs included


class ResponseStore:
    def __init__(self, capacity: int = MAX_STORED) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def get(self, response_id: str) -> StoredResponse | None:
        return self._items.get(response_id)

    def put(self, response_id: str, stored: StoredResponse) -> None:
        self._items[response_id] = stored
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def delete(self, response_id: str) -> bool:
        return self._items.pop(response_id, None) is not None


def _store(request: Request) -> ResponseStore:
    state = request.app.state
    if not hasattr(state, "responses"):
        state.responses = ResponseStore()
    return state.responses


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


# --- request → chat request ---------------------------------------------------------------


def _text_of(content: Any, param: str) -> str:
    """A message's content: a string, or text parts (input_text / output_text)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request("Content must be a string or a list of parts.", param=param)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal":
            texts.append(str(part.get("refusal", "")))
        else:
            raise bad_request(
                f"Content parts of type {kind!r} are not supported by this model; only text "
                "parts are.",
                param=f"{param}.[{j}].type",
            )
    return "\n".join(texts)


def input_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses input items → chat messages (consecutive function calls: one turn)."""
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        param = f"input.[{i}]"
        if not isinstance(item, dict):
            raise bad_request("Each input item must be an object.", param=param)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise bad_request(
                    "role must be 'user', 'assistant', 'system' or 'developer'.",
                    param=f"{param}.role",
                )
            messages.append({"role": role, "content": _text_of(item.get("content"), param)})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id") or item.get("id") or _new_id("call"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")},
            }
            if not isinstance(call["function"]["name"], str):
                raise bad_request("A function_call item needs a name.", param=f"{param}.name")
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output", "")
            text = output if isinstance(output, str) else _text_of(output, f"{param}.output")
            messages.append(
                {"role": "tool", "tool_call_id": item.get("call_id", ""), "content": text}
            )
        elif kind in ("reasoning", "file_search_call"):
            continue  # nothing the model needs to read again
        else:
            raise bad_request(f"Input items of type {kind!r} are not supported.", param=param)
    return messages


def _chat_tools(tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Function tools in chat form, and the retrieval options of a file_search tool."""
    functions, retrieval = [], None
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "function":
            fn = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
            functions.append({"type": "function", "function": fn})
        elif kind == "file_search":
            retrieval = {
                "vector_store_ids": tool.get("vector_store_ids") or [],
                "max_num_results": tool.get("max_num_results", 4),
            }
            if tool.get("filters") is not None:
                retrieval["filters"] = tool["filters"]
        else:
            raise bad_request(
                f"Tools of type {kind!r} are not supported; 'function' and 'file_search' are.",
                param=f"tools.[{i}].type",
            )
    return functions, retrieval


def _chat_tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict):
        if choice.get("type") == "function":
            return {"type": "function", "function": {"name": choice.get("name")}}
        return "auto"  # {"type": "file_search"}: retrieval runs whenever the tool is given
    return choice


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}
        return {"type": "json_schema", "json_schema": spec}
    return fmt


def chat_request(req: ResponsesRequest, history: list[dict[str, Any]]) -> ChatCompletionRequest:
    items = [*history, *_input_items(req)]
    messages = input_messages(items)
    if req.instructions:
        messages.insert(0, {"role": "system", "content": req.instructions})
    if not messages:
        raise bad_request("input must not be empty.", param="input")
    body: dict[str, Any] = {
        "messages": messages,
        "max_completion_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "response_format": _response_format(req.text),
        "parallel_tool_calls": req.parallel_tool_calls,
    }
    if req.tools:
        functions, retrieval = _chat_tools(req.tools)
        if functions:
            body["tools"] = functions
            body["tool_choice"] = _chat_tool_choice(req.tool_choice)
        if retrieval is not None:
            body["retrieval"] = retrieval
    for key in ("top_k", "min_p", "seed", "repeat_penalty", "stop"):
        if key in (req.model_extra or {}):
            body[key] = req.model_extra[key]  # extensions, as on /v1/chat/completions
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        raise bad_request(first["msg"], param=".".join(str(x) for x in first["loc"])) from None


def _input_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    if isinstance(req.input, str):
        return [{"type": "message", "role": "user", "content": req.input}]
    return req.input


# --- results → response -------------------------------------------------------------------


@dataclass
class ResponseBuilder:
    """The response object, as OpenAI shapes it, for one request."""

    req: ResponsesRequest
    model: str
    id: str = field(default_factory=lambda: _new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def body(
        self,
        status: str,
        output: list[dict[str, Any]],
        result: ChoiceResult | None = None,
    ) -> dict[str, Any]:
        req = self.req
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": req.parallel_tool_calls is True,
            "previous_response_id": req.previous_response_id,
            "reasoning": {"effort": None, "summary": None},
            "store": req.store,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "text": req.text or {"format": {"type": "text"}},
            "tool_choice": req.tool_choice or "auto",
            "tools": req.tools or [],
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "truncation": "disabled",
            "usage": None,
            "user": req.user,
            "metadata": req.metadata or {},
        }
        if status == "incomplete":
            body["incomplete_details"] = {"reason": "max_output_tokens"}
        if result is not None:
            body["usage"] = {
                "input_tokens": result.prompt_tokens,
                "input_tokens_details": {"cached_tokens": result.cached_tokens},
                "output_tokens": result.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": result.prompt_tokens + result.completion_tokens,
            }
        return body


def message_item(item_id: str, text: str, status: str, annotations: list[Any]) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": annotations}],
    }


def function_call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": _new_id("fc"),
        "call_id": call["id"],
        "name": call["function"]["name"],
        "arguments": call["function"]["arguments"],
        "status": status,
    }


def file_search_item(query: str) -> dict[str, Any]:
    return {
        "type": "file_search_call",
        "id": _new_id("fs"),
        "status": "completed",
        "queries": [query],
        "results": None,
    }


def file_citations(sources: list[Hit], at: int) -> list[dict[str, Any]]:
    """One file_citation per source the prompt carried (they are numbered [1], [2], ...)."""
    seen: set[str] = set()
    out = []
    for hit in sources:
        if hit.file_id in seen:
            continue
        seen.add(hit.file_id)
        out.append(
            {"type": "file_citation", "index": at, "file_id": hit.file_id, "filename": hit.filename}
        )
    return out


def _status(reason: FinishReason | None) -> str:
    return "incomplete" if reason is FinishReason.LENGTH else "completed"


def output_items(
    result: ChoiceResult, with_tools: bool, sources: list[Hit], query: str | None
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if query is not None:
        items.append(file_search_item(query))
    content, calls = parse_answer(result.text) if with_tools else (result.text, None)
    if calls:
        items += [function_call_item(c) for c in calls]
        return items
    text = content or ""
    status = _status(result.finish_reason)
    items.append(message_item(_new_id("msg"), text, status, file_citations(sources, len(text))))
    return items


# --- the endpoints ------------------------------------------------------------------------


async def create_response(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = validate_body(ResponsesRequest, await parse_json_body(request))
    model_id = check_model(runtime, req.model)
    store = _store(request)
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
    prepared = await prepare_chat(request, runtime, chat)
    streams = start_streams(
        runtime, chat, [prepared.prompt], [prepared.max_tokens], None, prepared.grammar
    )
    builder = ResponseBuilder(req, model_id)
    with_tools = prepared.tools is not None
    query = _search_query(chat) if chat.retrieval is not None else None
    history_items = [*history, *_input_items(req)]

    def remember(body: dict[str, Any]) -> None:
        if req.store:
            items = [
                *history_items,
                *(o for o in body["output"] if o["type"] != "file_search_call"),
            ]
            store.put(builder.id, StoredResponse(body, items))

    if req.stream:
        events = _stream_events(builder, streams[0], with_tools, prepared.sources, query, remember)
        return sse_response(events, on_close=lambda: cancel_all(streams))
    (result,) = await collect(request, streams)
    output = output_items(result, with_tools, prepared.sources, query)
    called = any(o["type"] == "function_call" for o in output)
    status = "completed" if called else _status(result.finish_reason)
    body = builder.body(status, output, result)
    remember(body)
    return JSONResponse(body)


def _search_query(chat: ChatCompletionRequest) -> str:
    assert chat.retrieval is not None
    messages = [{"role": m.role, "content": m.content} for m in chat.messages]
    return chat.retrieval.query or latest_user_text(messages)


async def get_response(request: Request) -> Response:
    stored = _store(request).get(request.path_params["response_id"])
    if stored is None:
        raise _not_found(request.path_params["response_id"])
    return JSONResponse(stored.body)


async def delete_response(request: Request) -> Response:
    response_id = request.path_params["response_id"]
    if not _store(request).delete(response_id):
        raise _not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


def _not_found(response_id: str) -> APIError:
    return APIError(
        404, f"Response with id '{response_id}' not found.", param="response_id", code="not_found"
    )


# --- streaming ----------------------------------------------------------------------------


class _Events:
    """Numbered stream events (`event: <type>` + JSON data with the same type)."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> ServerSentEvent:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return ServerSentEvent(data=dumps(data), event=kind)


async def _stream_events(
    builder: ResponseBuilder,
    stream: Any,
    with_tools: bool,
    sources: list[Hit],
    query: str | None,
    remember: Callable[[dict[str, Any]], None],
) -> AsyncIterator[ServerSentEvent]:
    event = _Events()
    output: list[dict[str, Any]] = []
    yield event("response.created", response=builder.body("in_progress", []))
    yield event("response.in_progress", response=builder.body("in_progress", []))
    if query is not None:
        item = file_search_item(query)
        yield event(
            "response.output_item.added", output_index=0, item={**item, "status": "in_progress"}
        )
        yield event("response.output_item.done", output_index=0, item=item)
        output.append(item)

    answer = AnswerStream() if with_tools else None
    message_id = _new_id("msg")
    text = ""
    opened = False
    result = ChoiceResult()

    def open_message() -> list[ServerSentEvent]:
        index = len(output)
        return [
            event(
                "response.output_item.added",
                output_index=index,
                item={**message_item(message_id, "", "in_progress", []), "content": []},
            ),
            event(
                "response.content_part.added",
                item_id=message_id,
                output_index=index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": []},
            ),
        ]

    async for _, out in merged([stream]):
        if out.finish_reason is FinishReason.ERROR:
            error = {"code": "server_error", "message": out.error or "engine error"}
            yield event("error", **error)
            return
        delta = answer.feed(out.text) if answer is not None else out.text
        if out.finished:
            result.add(out)
            if answer is not None:
                rest, calls = answer.finish()
                delta += rest
            else:
                calls = None
        else:
            calls = None
        if delta:
            if not opened:
                for e in open_message():
                    yield e
                opened = True
            text += delta
            yield event(
                "response.output_text.delta",
                item_id=message_id,
                output_index=len(output),
                content_index=0,
                delta=delta,
                logprobs=[],
            )
        if not out.finished:
            continue
        if calls:
            for call in calls:
                item = function_call_item(call)
                index = len(output)
                yield event(
                    "response.output_item.added",
                    output_index=index,
                    item={**item, "arguments": "", "status": "in_progress"},
                )
                yield event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=item["arguments"],
                )
                yield event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
                yield event("response.output_item.done", output_index=index, item=item)
                output.append(item)
            status = "completed"
        else:
            if not opened:
                for e in open_message():
                    yield e
            status = _status(result.finish_reason)
            item = message_item(message_id, text, status, file_citations(sources, len(text)))
            part = item["content"][0]
            index = len(output)
            yield event(
                "response.output_text.done",
                item_id=message_id,
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            )
            yield event(
                "response.content_part.done",
                item_id=message_id,
                output_index=index,
                content_index=0,
                part=part,
            )
            yield event("response.output_item.done", output_index=index, item=item)
            output.append(item)
        body = builder.body(status, output, result)
        remember(body)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        yield event(kind, response=body)
