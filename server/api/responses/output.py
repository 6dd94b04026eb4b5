"""Output items and the response object, shaped as OpenAI's."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from retrieval.chunk_store import Hit
from server.api.responses.wire import FILE_SEARCH_RESULTS, ResponsesRequest, conversation_id
from server.chat.generate import ChoiceResult
from server.chat.tools import parse_answer
from server.engine.logprobs import TokenLogprob
from server.engine.request import FinishReason
from server.ids import new_id


@dataclass
class ResponseBuilder:
    """The response object, as OpenAI shapes it, for one request."""

    req: ResponsesRequest
    model: str
    id: str = field(default_factory=lambda: new_id("resp_"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def body(
        self,
        status: str,
        output: list[dict[str, Any]],
        result: ChoiceResult | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The response object with every field the Open Responses specification requires
        (null where Hearth has no value)."""
        req = self.req
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status,
            "error": error,
            "incomplete_details": None,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": req.parallel_tool_calls is True,
            "previous_response_id": req.previous_response_id,
            "conversation": {"id": kept} if (kept := conversation_id(req)) else None,
            "reasoning": {"effort": None, "summary": None},
            "store": req.store,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "text": req.text or {"format": {"type": "text"}},
            "tool_choice": req.tool_choice or "auto",
            "tools": [echoed_tool(t) for t in req.tools or []],
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "presence_penalty": req.presence_penalty,
            "frequency_penalty": req.frequency_penalty,
            "top_logprobs": req.top_logprobs or 0,
            "truncation": req.truncation or "disabled",
            "usage": None,
            "user": req.user,
            "metadata": req.metadata or {},
            "max_tool_calls": req.max_tool_calls,
            "background": req.background,
            "service_tier": "default",
            "safety_identifier": req.safety_identifier,
            "prompt_cache_key": req.prompt_cache_key,
        }
        if status == "incomplete":
            body["incomplete_details"] = {"reason": "max_output_tokens"}
        if result is not None:
            body["usage"] = usage(result)
        return body


def usage(result: ChoiceResult) -> dict[str, Any]:
    return {
        "input_tokens": result.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": result.cached_tokens,
            "cache_write_tokens": result.cache_written_tokens,
        },
        "output_tokens": result.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def echoed_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool as the response lists it, with every field the specification requires:
    function tools carry `parameters` and `strict` (null when the request gave none),
    file_search tools the result count, ranking options and filters that applied."""
    if tool.get("type") == "function":
        return {"parameters": None, "strict": None, **tool}
    if tool.get("type") == "file_search":
        defaults = {
            "max_num_results": FILE_SEARCH_RESULTS,
            "ranking_options": {"ranker": "auto", "score_threshold": 0.0},
            "filters": None,
        }
        return {**defaults, **{k: v for k, v in tool.items() if v is not None}}
    return tool


def text_part(
    text: str, annotations: list[Any], logprobs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "type": "output_text",
        "text": text,
        "annotations": annotations,
        "logprobs": logprobs or [],
    }


def message_item(
    item_id: str,
    text: str,
    status: str,
    annotations: list[Any],
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [text_part(text, annotations, logprobs)],
    }


def function_call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    """A chat tool call as an output item: function_call, or custom_tool_call."""
    if call.get("type") == "custom":
        return {
            "type": "custom_tool_call",
            "id": new_id("ctc_"),
            "call_id": call["id"],
            "name": call["custom"]["name"],
            "input": call["custom"]["input"],
            "status": status,
        }
    return {
        "type": "function_call",
        "id": new_id("fc_"),
        "call_id": call["id"],
        "name": call["function"]["name"],
        "arguments": call["function"]["arguments"],
        "status": status,
    }


def function_call_items(
    calls: list[dict[str, Any]], reason: FinishReason | None
) -> list[dict[str, Any]]:
    """The calls as items; cut short by max_output_tokens, the last one is incomplete (its
    arguments are as far as they got)."""
    items = [function_call_item(c) for c in calls]
    if reason is FinishReason.LENGTH:
        items[-1]["status"] = "incomplete"
    return items


def file_search_item(query: str, results: list[Hit] | None = None) -> dict[str, Any]:
    """The search a response made; with `results` (include: file_search_call.results), the
    chunks it found, as OpenAI lists them."""
    return {
        "type": "file_search_call",
        "id": new_id("fs_"),
        "status": "completed",
        "queries": [query],
        "results": None
        if results is None
        else [
            {
                "file_id": hit.file_id,
                "filename": hit.filename,
                "score": hit.score,
                "text": hit.text,
                "attributes": hit.attributes,
            }
            for hit in results
        ],
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


def status_of(reason: FinishReason | None) -> str:
    return "incomplete" if reason is FinishReason.LENGTH else "completed"


# A choice's token log-probabilities as output_text.logprobs entries (api/logprobs.py).
LogprobFormat = Callable[[list[TokenLogprob]], list[dict[str, Any]]]


def output_items(
    result: ChoiceResult,
    with_tools: bool,
    sources: list[Hit],
    query: str | None,
    logprobs: LogprobFormat | None = None,
    search_results: bool = False,
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if query is not None:
        items.append(file_search_item(query, sources if search_results else None))
    content, calls = parse_answer(result.text) if with_tools else (result.text, None)
    if calls:
        return items + function_call_items(calls, result.finish_reason)
    text = content or ""
    status = status_of(result.finish_reason)
    annotations = file_citations(sources, len(text))
    text_logprobs = logprobs(result.logprobs) if logprobs and not with_tools else None
    items.append(message_item(new_id("msg_"), text, status, annotations, text_logprobs))
    return items
