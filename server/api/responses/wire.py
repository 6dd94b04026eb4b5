"""The Responses request, and its translation into a chat completion request."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.api.errors import bad_request
from server.chat.requests import ChatCompletionRequest, Metadata
from server.ids import new_id

# Chunks a file_search tool retrieves when the request does not say.
FILE_SEARCH_RESULTS = 4


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"input": "Say hello.", "max_output_tokens": 16}]},
    )

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
    # Extra output to include: "message.output_text.logprobs", "file_search_call.results"
    # (the others are accepted and have nothing to add here).
    include: list[str] | None = None
    # A conversation (/v1/conversations) whose items are the history, and which gets this
    # response's input and output: its id, or {"id": ...}.
    conversation: str | dict[str, Any] | None = None
    store: bool = True
    metadata: Metadata | None = None
    user: str | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_tool_calls: int | None = Field(None, ge=1)
    truncation: Literal["auto", "disabled"] | None = None
    background: bool = False
    service_tier: str | None = None
    safety_identifier: str | None = Field(None, max_length=64)
    prompt_cache_key: str | None = Field(None, max_length=256)


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


# What /v1/responses/compact puts in a compaction item's `encrypted_content`: Hearth keeps
# no secrets from the client that holds its own conversation, so it is the summary in
# base64-coded JSON, under a marker that says whose it is.
COMPACTION_MARK = "hearth-compaction-v1:"


def compaction_content(summary: str) -> str:
    blob = json.dumps({"summary": summary}, ensure_ascii=False).encode()
    return COMPACTION_MARK + base64.b64encode(blob).decode("ascii")


def _compaction_summary(item: dict[str, Any], param: str) -> str:
    content = item.get("encrypted_content")
    if not isinstance(content, str) or not content.startswith(COMPACTION_MARK):
        raise bad_request(
            "This compaction item was not made by this server (POST /v1/responses/compact); "
            "send the conversation's messages instead.",
            param=f"{param}.encrypted_content",
        )
    try:
        summary = json.loads(base64.b64decode(content[len(COMPACTION_MARK) :]))["summary"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise bad_request("The compaction item is damaged.", param=param) from None
    if not isinstance(summary, str):
        raise bad_request("The compaction item is damaged.", param=param)
    return summary


def input_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses input items → chat messages (consecutive function calls: one turn; the
    summaries of compaction items first, as one system message)."""
    messages: list[dict[str, Any]] = []
    summaries: list[str] = []
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
                "id": _call_id(item, param),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")},
            }
            if not isinstance(call["function"]["name"], str):
                raise bad_request("A function_call item needs a name.", param=f"{param}.name")
            _add_call(messages, call)
        elif kind == "custom_tool_call":
            if not isinstance(item.get("name"), str):
                raise bad_request("A custom_tool_call item needs a name.", param=f"{param}.name")
            call = {
                "id": _call_id(item, param),
                "type": "custom",
                "custom": {"name": item["name"], "input": str(item.get("input", ""))},
            }
            _add_call(messages, call)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output", "")
            text = output if isinstance(output, str) else _text_of(output, f"{param}.output")
            messages.append(
                {"role": "tool", "tool_call_id": _call_id(item, param, ""), "content": text}
            )
        elif kind == "compaction":
            summaries.append(_compaction_summary(item, param))
        elif kind in ("reasoning", "file_search_call"):
            continue  # nothing the model needs to read again
        else:
            raise bad_request(f"Input items of type {kind!r} are not supported.", param=param)
    if summaries:
        text = "Summary of the conversation so far:\n" + "\n\n".join(summaries)
        messages.insert(0, {"role": "system", "content": text})
    return messages


def _call_id(item: dict[str, Any], param: str, default: str | None = None) -> str:
    """A call item's call_id (else its id, else a new one), an output item's call_id (else
    `default`): a string, or 400."""
    for key in ("call_id",) if default is not None else ("call_id", "id"):
        value = item.get(key)
        if value is not None and not isinstance(value, str):
            raise bad_request(f"{key} must be a string.", param=f"{param}.{key}")
        if value:
            return value
    return default if default is not None else new_id("call_")


def _add_call(messages: list[dict[str, Any]], call: dict[str, Any]) -> None:
    """A call item joins the assistant turn of calls just before it, or starts one."""
    last = messages[-1] if messages else None
    if last and last["role"] == "assistant" and last.get("tool_calls"):
        last["tool_calls"].append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _chat_tools(tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Function and custom tools in chat form, and the retrieval options of a file_search
    tool."""
    functions, retrieval = [], None
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "function":
            fn = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
            functions.append({"type": "function", "function": fn})
        elif kind == "custom":
            custom = {k: tool[k] for k in ("name", "description", "format") if k in tool}
            functions.append({"type": "custom", "custom": custom})
        elif kind == "file_search":
            retrieval = {
                "vector_store_ids": tool.get("vector_store_ids") or [],
                "max_num_results": tool.get("max_num_results", FILE_SEARCH_RESULTS),
            }
            if tool.get("filters") is not None:
                retrieval["filters"] = tool["filters"]
            ranking = tool.get("ranking_options")
            if isinstance(ranking, dict) and ranking.get("ranker") == "none":
                retrieval["rerank"] = False  # OpenAI's way of declining the reranker
        else:
            raise bad_request(
                f"Tools of type {kind!r} are not supported; 'function', 'custom' and "
                "'file_search' are.",
                param=f"tools.[{i}].type",
            )
    return functions, retrieval


def _chat_tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind in ("function", "custom"):
            return {"type": kind, kind: {"name": choice.get("name")}}
        if kind == "allowed_tools":
            # Its tools may name a file_search tool, which is no chat tool: those go.
            tools = [
                {"type": t["type"], t["type"]: {"name": t.get("name")}}
                for t in choice.get("tools") or []
                if isinstance(t, dict) and t.get("type") in ("function", "custom")
            ]
            if not tools:
                return "auto"
            return {"type": kind, "allowed_tools": {"mode": choice.get("mode"), "tools": tools}}
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
    items = [*history, *input_items(req)]
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
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
    }
    if wants_logprobs(req):
        body["logprobs"] = True
        body["top_logprobs"] = req.top_logprobs or 0
    if req.tools:
        functions, retrieval = _chat_tools(req.tools)
        if functions:
            body["tools"] = functions
            body["tool_choice"] = _chat_tool_choice(req.tool_choice)
        if retrieval is not None:
            body["retrieval"] = retrieval
    for key in ("top_k", "min_p", "seed", "repeat_penalty", "stop", "ignore_eos", "speculative"):
        if key in (req.model_extra or {}):
            body[key] = req.model_extra[key]  # extensions, as on /v1/chat/completions
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        raise bad_request(first["msg"], param=".".join(str(x) for x in first["loc"])) from None


def wants_logprobs(req: ResponsesRequest) -> bool:
    """Whether output text carries its tokens' log-probabilities: asked for with include,
    or by asking for alternatives (top_logprobs)."""
    return "message.output_text.logprobs" in (req.include or []) or bool(req.top_logprobs)


def conversation_id(req: ResponsesRequest) -> str | None:
    """The conversation a request continues, or None; with previous_response_id too, 400
    (they are two ways to give one history)."""
    given = req.conversation
    if isinstance(given, dict):
        given = given.get("id")
        if not isinstance(given, str):
            raise bad_request('conversation must be an id or {"id": ...}.', param="conversation")
    if given is not None and req.previous_response_id is not None:
        raise bad_request(
            "Give previous_response_id or conversation, not both.", param="conversation"
        )
    return given


def input_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    if isinstance(req.input, str):
        return [{"type": "message", "role": "user", "content": req.input}]
    return req.input


def with_id(item: dict[str, Any]) -> dict[str, Any]:
    """An input item as it is kept: with an id of its own (OpenAI's input items have one,
    and list pagination goes by it)."""
    given = item.get("id")
    if given is not None and not isinstance(given, str):
        raise bad_request("An input item's id must be a string.", param="input.id")
    if given:
        return item
    prefix = {
        "message": "msg_",
        "function_call": "fc_",
        "function_call_output": "fco_",
        "custom_tool_call": "ctc_",
        "custom_tool_call_output": "ctco_",
    }
    return {"id": new_id(prefix.get(str(item.get("type", "message")), "item_")), **item}


def input_item(item: dict[str, Any]) -> dict[str, Any]:
    """How OpenAI lists an input message: typed content parts (an assistant's text is
    output_text, as in the response that made it) and a status."""
    if item.get("type", "message") != "message":
        return item
    content = item.get("content")
    if isinstance(content, str):
        if item.get("role") == "assistant":
            content = [{"type": "output_text", "text": content, "annotations": []}]
        else:
            content = [{"type": "input_text", "text": content}]
    return {"status": "completed", **item, "type": "message", "content": content}


def wants_search_results(req: ResponsesRequest) -> bool:
    """Whether a file_search_call item lists the chunks it found (include)."""
    return "file_search_call.results" in (req.include or [])
