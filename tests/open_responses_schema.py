"""The Open Responses specification's response object and stream events, as pydantic
models written for Hearth's tests from the published schema (openresponses.org's
OpenAPI document, `ResponseResource` and the streaming event union that its compliance
suite validates with).

The rules that matter are the spec's, not OpenAI's SDK's (which accepts anything): a
field the spec lists as required must be present even when its value is null, numbers
must be numbers, and every event carries its type and sequence number. Extra fields are
allowed, as the spec allows them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class LogProb(_Strict):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[dict[str, Any]]


class OutputText(_Strict):
    type: Literal["output_text"]
    text: str
    annotations: list[dict[str, Any]]
    logprobs: list[LogProb]


class Refusal(_Strict):
    type: Literal["refusal"]
    refusal: str


class Message(_Strict):
    type: Literal["message"]
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant", "user", "system", "developer"]
    content: list[Annotated[OutputText | Refusal, Field(discriminator="type")]]


class FunctionCall(_Strict):
    type: Literal["function_call"]
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


class FileSearchCall(_Strict):
    type: Literal["file_search_call"]
    id: str
    status: Literal["in_progress", "searching", "completed", "incomplete", "failed"]
    queries: list[str]
    results: list[dict[str, Any]] | None


OutputItem = Annotated[Message | FunctionCall | FileSearchCall, Field(discriminator="type")]


class FunctionTool(_Strict):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None
    strict: bool | None


class RankingOptions(_Strict):
    ranker: str
    score_threshold: float


class FileSearchTool(_Strict):
    type: Literal["file_search"]
    vector_store_ids: list[str]
    max_num_results: int
    ranking_options: RankingOptions
    filters: dict[str, Any] | None


Tool = Annotated[FunctionTool | FileSearchTool, Field(discriminator="type")]


class Usage(_Strict):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens_details: dict[str, int]


class Error(_Strict):
    code: str
    message: str


class ResponseResource(_Strict):
    """Every field below without a default is required by the spec (null allowed where
    the type says so)."""

    id: str
    object: Literal["response"]
    created_at: int
    completed_at: int | None
    status: Literal["queued", "in_progress", "completed", "failed", "incomplete", "cancelled"]
    incomplete_details: dict[str, Any] | None
    model: str
    previous_response_id: str | None
    instructions: str | None
    output: list[OutputItem]
    error: Error | None
    tools: list[Tool]
    tool_choice: str | dict[str, Any]
    truncation: Literal["auto", "disabled"]
    parallel_tool_calls: bool
    text: dict[str, Any]
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    top_logprobs: int
    temperature: float
    reasoning: dict[str, Any] | None
    usage: Usage | None
    max_output_tokens: int | None
    max_tool_calls: int | None
    store: bool
    background: bool
    service_tier: str
    metadata: Any
    safety_identifier: str | None
    prompt_cache_key: str | None


class _Event(_Strict):
    sequence_number: int


class ResponseLifecycle(_Event):
    type: Literal[
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.completed",
        "response.failed",
        "response.incomplete",
    ]
    response: ResponseResource


class OutputItemEvent(_Event):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int
    item: OutputItem


class ContentPartEvent(_Event):
    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: int
    content_index: int
    part: Annotated[OutputText | Refusal, Field(discriminator="type")]


class TextDelta(_Event):
    type: Literal["response.output_text.delta"]
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[LogProb]


class TextDone(_Event):
    type: Literal["response.output_text.done"]
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[LogProb]


class ArgumentsDelta(_Event):
    type: Literal["response.function_call_arguments.delta"]
    item_id: str
    output_index: int
    delta: str


class ArgumentsDone(_Event):
    type: Literal["response.function_call_arguments.done"]
    item_id: str
    output_index: int
    arguments: str


class ErrorPayload(_Strict):
    type: str
    code: str | None
    message: str
    param: str | None


class ErrorEvent(_Event):
    type: Literal["error"]
    error: ErrorPayload


StreamEvent = TypeAdapter(
    Annotated[
        ResponseLifecycle
        | OutputItemEvent
        | ContentPartEvent
        | TextDelta
        | TextDone
        | ArgumentsDelta
        | ArgumentsDone
        | ErrorEvent,
        Field(discriminator="type"),
    ]
)
