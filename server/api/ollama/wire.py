"""Ollama's request bodies (github.com/ollama/ollama docs/api.md), and how each becomes the
OpenAI-shaped request the chat service already runs: one preparation path, one engine, one
prefix cache behind both APIs.

Ollama's defaults differ from OpenAI's where a model has no Modelfile to set them:
temperature 0.8, top_k 40, top_p 0.9, repeat_penalty 1.1; clients written for Ollama expect
those, so they apply here when `options` leaves them out. Options that tune the runner
rather than the sampling (num_ctx, num_gpu, num_thread, use_mmap, ...) are accepted and
ignored: Hearth's context and offload are the server's configuration.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.chat.requests import ChatCompletionRequest, CompletionRequest, RetrievalOptions
from server.errors import InvalidRequest

OLLAMA_DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "repeat_penalty": 1.1}


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: int | float | str | None) -> float | None:
    """Ollama's keep_alive in seconds: a number of seconds or a Go duration ("5m", "1h30m",
    "300ms"); negative: for ever; None: not given. A bad value is a 400."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    rest, total = text.lstrip("+-"), 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", rest):
        total += float(number) * _UNITS[unit]
    if not rest or re.sub(r"(\d+(?:\.\d+)?)(ms|s|m|h)", "", rest):
        raise InvalidRequest(f"keep_alive {value!r} is not a duration", param="keep_alive")
    return sign * total


class Options(BaseModel):
    """The sampling options Hearth applies; the rest of Ollama's are accepted (extra)."""

    model_config = ConfigDict(extra="allow")

    seed: int | None = None
    num_predict: int | None = None
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    repeat_penalty: float | None = Field(None, gt=0.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    stop: list[str] | None = None

    def sampling(self) -> dict[str, Any]:
        """The fields of an OpenAI-shaped request these options set."""
        fields: dict[str, Any] = dict(OLLAMA_DEFAULTS)
        for name in (
            "seed",
            "top_k",
            "top_p",
            "min_p",
            "temperature",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
            "stop",
        ):
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        # num_predict: -1 (Ollama's default) is "until the context is full", -2 "fill the
        # context"; both are what no token limit means here. 0 asks for nothing new.
        if self.num_predict is not None and self.num_predict > 0:
            fields["max_tokens"] = self.num_predict
        return fields


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    function: ToolCallFunction


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    thinking: str | None = None


class _Generation(BaseModel):
    """What /api/chat and /api/generate share."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: Options = Field(default_factory=Options)
    stream: bool = True
    keep_alive: int | float | str | None = None
    think: bool | Literal["low", "medium", "high"] | None = None
    # Hearth extension, as on /v1/chat/completions: answer from these vector stores.
    retrieval: RetrievalOptions | None = None

    def common(self) -> dict[str, Any]:
        if self.think:
            raise InvalidRequest(f'"{self.model}" does not support thinking', param="think")
        fields = self.options.sampling()
        if self.format == "json":
            fields["response_format"] = {"type": "json_object"}
        elif isinstance(self.format, dict):
            schema = {"name": "format", "schema": self.format}
            fields["response_format"] = {"type": "json_schema", "json_schema": schema}
        return fields


class ChatRequest(_Generation):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None

    def to_openai(self, model_id: str) -> ChatCompletionRequest:
        messages = [_openai_message(i, m) for i, m in enumerate(self.messages)]
        return ChatCompletionRequest(
            model=model_id,
            messages=messages,
            tools=self.tools or None,
            retrieval=self.retrieval,
            **self.common(),
        )


class GenerateRequest(_Generation):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False
    images: list[str] | None = None
    # Deprecated in Ollama but still sent by older clients: the conversation so far, as
    # token ids this API returned.
    context: list[int] | None = None

    def check(self) -> None:
        if self.images:
            raise InvalidRequest(f'"{self.model}" does not support images', param="images")
        if self.suffix:
            raise InvalidRequest(f'"{self.model}" does not support insert', param="suffix")
        if self.template:
            raise InvalidRequest(
                "Custom Go templates are not supported; Hearth applies the model's own chat "
                "template (or send raw: true with a prompt you formatted).",
                param="template",
            )
        if self.raw and self.retrieval is not None:
            raise InvalidRequest("retrieval needs the chat template: not with raw", "retrieval")

    def to_chat(self, model_id: str) -> ChatCompletionRequest:
        messages: list[dict[str, Any]] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": self.prompt})
        return ChatCompletionRequest(
            model=model_id, messages=messages, retrieval=self.retrieval, **self.common()
        )

    def to_completion(self, model_id: str) -> CompletionRequest:
        fields = self.common()
        return CompletionRequest(
            model=model_id, prompt=self.prompt, **{"max_tokens": None, **fields}
        )


def _openai_message(index: int, m: Message) -> dict[str, Any]:
    if m.images:
        raise InvalidRequest(
            "This model does not support images.", param=f"messages.[{index}].images"
        )
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": f"call_{index}_{k}",
                "type": "function",
                "function": {
                    "name": call.function.name,
                    "arguments": call.function.arguments
                    if isinstance(call.function.arguments, str)
                    else json.dumps(call.function.arguments, ensure_ascii=False),
                },
            }
            for k, call in enumerate(m.tool_calls)
        ]
    if m.role == "tool" and m.tool_name:
        out["name"] = m.tool_name
    return out


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: str | list[str]
    truncate: bool = True
    dimensions: int | None = Field(None, ge=1)
    keep_alive: int | float | str | None = None
    options: dict[str, Any] | None = None


class EmbeddingsRequest(BaseModel):
    """The older /api/embeddings: one prompt, one vector."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    prompt: str = ""
    keep_alive: int | float | str | None = None
    options: dict[str, Any] | None = None


class ModelRequest(BaseModel):
    """/api/show (and the model-management calls Hearth refuses)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    name: str | None = None  # older clients' name for it
    verbose: bool = False

    @property
    def wanted(self) -> str:
        return self.model or self.name or ""
