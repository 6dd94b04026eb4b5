"""OpenAI's deprecated `functions` and `function_call` (the API before `tools`), still sent
by older clients: the request becomes the same request with tools (one call at most), and
the answer goes back in the old shape, `message.function_call` and finish_reason
"function_call". Earlier turns in the old shape (an assistant's `function_call`, a
`function` message with its result) are read as tool calls and results.
"""

from __future__ import annotations

from typing import Any

from server.chat.requests import ChatCompletionRequest, ChatMessage
from server.errors import InvalidRequest


def upgrade(req: ChatCompletionRequest) -> ChatCompletionRequest:
    """The request in tools form. `functions` stays set on it: `asked_legacy` tells the
    answer's shape from that."""
    messages = [_with_tool_calls(m, i) for i, m in enumerate(req.messages)]
    if req.functions is None:
        if req.function_call is not None:
            raise InvalidRequest("function_call needs functions.", param="function_call")
        return req.model_copy(update={"messages": messages})
    if req.tools:
        raise InvalidRequest("Use tools or functions, not both.", param="functions")
    return req.model_copy(
        update={
            "messages": messages,
            "tools": [{"type": "function", "function": f} for f in req.functions],
            "tool_choice": _tool_choice(req.function_call),
            "parallel_tool_calls": False,
        }
    )


def asked_legacy(req: ChatCompletionRequest) -> bool:
    return req.functions is not None


def legacy_message(message: dict[str, Any]) -> dict[str, Any]:
    """A chat message with tool_calls in the old shape: the (only) call as function_call."""
    calls = message.pop("tool_calls", None)
    if calls:
        message["function_call"] = calls[0]["function"]
    return message


def legacy_finish_reason(reason: str) -> str:
    return "function_call" if reason == "tool_calls" else reason


def _tool_choice(function_call: Any) -> Any:
    if function_call is None or function_call in ("none", "auto"):
        return function_call
    if isinstance(function_call, dict) and isinstance(function_call.get("name"), str):
        return {"type": "function", "function": {"name": function_call["name"]}}
    raise InvalidRequest(
        "function_call must be 'none', 'auto' or {\"name\": ...}.", param="function_call"
    )


def _with_tool_calls(message: ChatMessage, index: int) -> ChatMessage:
    """An assistant turn with an old-style function_call, as a turn with one tool call."""
    call = (message.model_extra or {}).get("function_call")
    if message.role != "assistant" or message.tool_calls or not isinstance(call, dict):
        return message
    tool_call = {"id": f"call_{index}", "type": "function", "function": call}
    return message.model_copy(update={"tool_calls": [tool_call]})
