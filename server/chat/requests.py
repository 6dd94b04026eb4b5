"""Request bodies of the OpenAI endpoints, validated with pydantic.

Unknown fields are accepted and ignored, as OpenAI-compatible servers do, so newer clients
keep working. Hearth's extensions (top_k, min_p, repeat_penalty, ignore_eos, speculative) follow the
names llama-server and vLLM use.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

# Bounds on what one request may ask for (OpenAI's own where it has one): each sizes work
# or memory on the server.
MAX_STOP = 16
MAX_STOP_CHARS = 1000
MAX_LOGIT_BIAS = 1024
MAX_DRY_BREAKERS = 32
MAX_DRY_BREAKER_CHARS = 100
MAX_VECTOR_STORES = 16

# OpenAI's limits on metadata and file attributes: 16 pairs, 64-character keys,
# 512-character string values.
_Key = Annotated[str, StringConstraints(max_length=64)]
_Value = Annotated[str, StringConstraints(max_length=512)]
Metadata = Annotated[dict[_Key, _Value], Field(max_length=16)]
Attributes = Annotated[dict[_Key, _Value | bool | float], Field(max_length=16)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    user: str | None = None
    # Extensions (llama-server, vLLM)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, gt=0.0)
    ignore_eos: bool = False
    # false: never draft this request's tokens from its prompt ([speculative]); the
    # output is the same either way, only its speed differs.
    speculative: bool = True
    # DRY repetition penalty (llama-server's names; 0: off).
    dry_multiplier: float = Field(0.0, ge=0.0)
    dry_base: float = Field(1.75, ge=1.0)
    dry_allowed_length: int = Field(2, ge=1)
    dry_penalty_last_n: int = Field(-1, ge=-1)
    dry_sequence_breakers: list[str] | None = Field(None, max_length=MAX_DRY_BREAKERS)
    # llama-server's structured-output extensions: a GBNF grammar, or a JSON schema.
    grammar: str | None = None
    json_schema: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence may be at most {MAX_STOP_CHARS} characters")
        return v

    @field_validator("dry_sequence_breakers")
    @classmethod
    def _breakers(cls, v: list[str] | None) -> list[str] | None:
        for b in v or []:
            if not b or "\0" in b:
                raise ValueError("dry_sequence_breakers must be non-empty strings without NUL")
            if len(b) > MAX_DRY_BREAKER_CHARS:
                raise ValueError(
                    f"a DRY sequence breaker may be at most {MAX_DRY_BREAKER_CHARS} characters"
                )
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias may name at most {MAX_LOGIT_BIAS} tokens")
        for key, value in (v or {}).items():
            if not key.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -100.0 <= value <= 100.0:
                raise ValueError(f"logit_bias values must be between -100 and 100, got {value}")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class RetrievalOptions(BaseModel):
    """Hearth extension: answer from these vector stores and cite them."""

    model_config = ConfigDict(extra="forbid")
    vector_store_ids: list[str] = Field(min_length=1, max_length=MAX_VECTOR_STORES)
    max_num_results: int = Field(4, ge=1, le=20)
    mode: Literal["hybrid", "vector", "text"] = "hybrid"
    query: str | None = None
    filters: dict[str, Any] | None = None
    # Reorder with the reranker when one is loaded (retrieval.rerank_model); false: don't.
    rerank: bool | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class Prediction(BaseModel):
    """OpenAI's Predicted Outputs: the output the client expects (the file being edited,
    the document being regenerated). Hearth drafts from it, so the parts the output repeats
    come out several tokens a step; the output itself is the same with or without it."""

    model_config = ConfigDict(extra="allow")
    type: Literal["content"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        c = self.content
        return c if isinstance(c, str) else "".join(part.text for part in c)


class ChatCompletionRequest(SamplingFields):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}]
        }
    )
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    retrieval: RetrievalOptions | None = None
    prediction: Prediction | None = None
    # Keep the completion for GET /v1/chat/completions (OpenAI's stored completions).
    store: bool = False
    metadata: Metadata | None = None
    # OpenAI's deprecated form of tools (legacy_functions.py).
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    # OpenAI's outputs other than text, refused by name (prepare.py) rather than ignored.
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


TokenIds = list[Annotated[int, Field(ge=0)]]


class CompletionRequest(SamplingFields):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"prompt": "Once upon a time", "max_tokens": 16}]}
    )
    prompt: str | list[str] | TokenIds | list[TokenIds]
    # OpenAI's legacy default: 16 tokens.
    max_tokens: int | None = Field(16, ge=0)
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1)
    response_format: dict[str, Any] | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompt field as a list of prompts, each text or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            return []
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]
