"""Anthropic's Messages API request (docs.anthropic.com/en/api/messages), and how it becomes
the OpenAI-shaped request the chat service runs: one preparation path, engine and prefix
cache behind both.

Sampling parameters (temperature, top_p, top_k) are taken from clients that still send them;
`output_config.format` (structured outputs) is enforced by a grammar, as response_format
is. Content blocks map one to one where Hearth has the feature: `text`; `tool_use` in
assistant turns (OpenAI's tool_calls); `tool_result` in user turns (OpenAI's tool
messages). Images, documents and thinking are refused with a clear 400, as are server
tools (web search, code execution): Hearth runs the client's own tools only.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.chat.requests import MAX_STOP, ChatCompletionRequest, RetrievalOptions
from server.errors import InvalidRequest


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    type: str | None = None  # "custom" (or absent) for the client's own tools


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class OutputFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    """Structured outputs (`format`) go through the grammar path; `effort` has no meaning
    for a model without extended thinking and is accepted as is."""

    model_config = ConfigDict(extra="allow")
    format: OutputFormat | None = None
    effort: str | None = None


class Thinking(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str


class _Conversation(BaseModel):
    """What /v1/messages and /v1/messages/count_tokens share."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    # Hearth extension, as on /v1/chat/completions: answer from these vector stores.
    retrieval: RetrievalOptions | None = None

    def to_openai(self, model_id: str, **sampling: Any) -> ChatCompletionRequest:
        if self.thinking is not None and self.thinking.type != "disabled":
            raise InvalidRequest("This model does not support extended thinking.", "thinking")
        messages: list[dict[str, Any]] = []
        if self.system:
            messages.append({"role": "system", "content": _text(self.system, "system")})
        names: dict[str, str] = {}  # tool_use id -> tool name, for the results
        for i, m in enumerate(self.messages):
            messages += _openai_messages(i, m, names)
        fields: dict[str, Any] = {}
        if self.tools:
            fields["tools"] = [_openai_tool(i, t) for i, t in enumerate(self.tools)]
        if self.tool_choice is not None:
            fields.update(_openai_tool_choice(self.tool_choice))
        return ChatCompletionRequest(
            model=model_id, messages=messages, retrieval=self.retrieval, **fields, **sampling
        )


class MessagesRequest(_Conversation):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(None, max_length=MAX_STOP)
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    stream: bool = False
    metadata: dict[str, Any] | None = None
    output_config: OutputConfig | None = None

    def chat_request(self, model_id: str) -> ChatCompletionRequest:
        sampling: dict[str, Any] = {"max_tokens": self.max_tokens, "stream": self.stream}
        if self.output_config is not None and self.output_config.format is not None:
            schema = {"name": "output", "schema": self.output_config.format.schema_}
            sampling["response_format"] = {"type": "json_schema", "json_schema": schema}
        if self.stop_sequences:
            sampling["stop"] = self.stop_sequences
        for name in ("temperature", "top_p", "top_k"):
            if getattr(self, name) is not None:
                sampling[name] = getattr(self, name)
        return self.to_openai(model_id, **sampling)


class CountTokensRequest(_Conversation):
    pass


def _text(content: str | list[dict[str, Any]], param: str) -> str:
    """A string, or text blocks joined (system prompts and tool results)."""
    if isinstance(content, str):
        return content
    texts = []
    for j, block in enumerate(content):
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise _unsupported(block, f"{param}.[{j}]")
        texts.append(block["text"])
    return "\n".join(texts)


def _unsupported(block: dict[str, Any], param: str) -> InvalidRequest:
    kind = block.get("type")
    what = {
        "image": "image content blocks: this model reads text only",
        "document": "document content blocks: upload files to a vector store and use "
        "`retrieval` instead",
        "thinking": "thinking blocks: this model does not support extended thinking",
        "redacted_thinking": "thinking blocks: this model does not support extended thinking",
    }.get(str(kind), f"content blocks of type {kind!r}")
    return InvalidRequest(f"Hearth does not support {what}.", param=param)


def _openai_messages(i: int, m: Message, names: dict[str, str]) -> list[dict[str, Any]]:
    if isinstance(m.content, str):
        return [{"role": m.role, "content": m.content}]
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(m.content):
        kind = block.get("type")
        param = f"messages.[{i}].content.[{j}]"
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use" and m.role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise InvalidRequest("A tool_use block needs an id and a name.", param=param)
            names[block["id"]] = block["name"]
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
        elif kind == "tool_result" and m.role == "user":
            tool_use_id = block.get("tool_use_id")
            if not isinstance(tool_use_id, str):
                raise InvalidRequest("A tool_result block needs a tool_use_id.", param=param)
            content = block.get("content", "")
            text = _text(content, f"{param}.content") if content else ""
            if block.get("is_error"):
                text = f"Error: {text}"
            result: dict[str, Any] = {"role": "tool", "tool_call_id": tool_use_id, "content": text}
            if tool_use_id in names:
                result["name"] = names[tool_use_id]
            results.append(result)
        else:
            raise _unsupported(block, param)
    out: list[dict[str, Any]] = list(results)  # tool results answer the previous turn
    if m.role == "assistant":
        message: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts)}
        if calls:
            message["tool_calls"] = calls
        out.append(message)
    elif texts or not results:
        out.append({"role": "user", "content": "\n".join(texts)})
    return out


def _openai_tool(i: int, tool: Tool) -> dict[str, Any]:
    if tool.type not in (None, "custom"):
        raise InvalidRequest(
            f"Server tools ({tool.type}) are not available here; Hearth runs the client's "
            "own tools only.",
            param=f"tools.[{i}].type",
        )
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _openai_tool_choice(choice: ToolChoice) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest('tool_choice of type "tool" needs a name.', "tool_choice.name")
        fields["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        fields["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    # Anthropic allows several calls unless told not to; Hearth's default is one (small
    # models repeat a call when allowed several), so only an explicit false changes it.
    if choice.disable_parallel_tool_use is False:
        fields["parallel_tool_calls"] = True
    return fields
