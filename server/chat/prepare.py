"""Requests into what the engine runs: prompt tokens, token limits and the grammar that
constrains the output. Every check that can fail a request happens here, before anything
is queued, and fails with a domain error naming the field (server/errors.py).

The CPU-heavy parts (grammars, templates, tokenizers) run in worker threads, never on the
event loop that serves everyone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from retrieval.augmentation import augment, citations, latest_user_text, order_sources
from retrieval.chunk_store import Hit
from server.chat.deps import ChatRuntime
from server.chat.generate import max_tokens_for
from server.chat.requests import ChatCompletionRequest, ChatMessage, CompletionRequest
from server.chat.structured import check_compiles, request_grammar
from server.chat.template import ChatTemplateError
from server.chat.tools import ToolPlan, history_messages, plan_tools
from server.errors import InvalidRequest, NotFound


def check_model(runtime: ChatRuntime, model: str | None) -> str:
    """The model id to answer with; a name Hearth does not serve is NotFound."""
    if model is None or model == runtime.model_id or model in runtime.model_aliases:
        return runtime.model_id
    raise NotFound(
        f"The model '{model}' does not exist. This server serves '{runtime.model_id}'.",
        param="model",
        code="model_not_found",
    )


@dataclass(frozen=True)
class PreparedChat:
    """A chat request turned into what the engine runs."""

    model_id: str
    prompt: list[int]
    max_tokens: int
    grammar: str | None
    tools: ToolPlan | None
    sources: list[Hit]
    # The query the sources were searched with (None: the request asked for no sources).
    query: str | None
    # The client's predicted output as tokens, at most max_tokens of them (None: none).
    prediction: list[int] | None = None

    def citations(self) -> list[dict[str, Any]] | None:
        """The sources the prompt carried, numbered as it cites them (None: no retrieval)."""
        return None if self.query is None else citations(self.sources)


async def prepare_chat(runtime: ChatRuntime, req: ChatCompletionRequest) -> PreparedChat:
    """Messages (+ retrieved sources, + tool instructions) -> prompt tokens, token limit and
    the grammar constraining the output."""
    model_id = check_model(runtime, req.model)
    if req.top_logprobs and not req.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true.", param="top_logprobs")
    _check_outputs(req)
    grammar, tools = await asyncio.to_thread(_constraints, runtime, req)
    messages = history_messages(template_messages(req.messages), runtime.prompts.template.source)
    query, sources = await _sources(runtime, req, messages)
    messages = augment(messages, sources)
    if tools is not None:
        messages = tools.apply(messages)
    prompt = await asyncio.to_thread(_chat_prompt, runtime, messages)
    limit = max_tokens_for(runtime, req.token_limit, len(prompt))
    prediction = None
    if req.prediction is not None and req.prediction.text:
        # Plain text, as the model writes it: special-token names stay text. The output
        # cannot be longer than the limit, so neither need the drafts be.
        tokens = await asyncio.to_thread(runtime.model.tokenize, req.prediction.text, False, False)
        prediction = tokens[:limit] or None
    return PreparedChat(model_id, prompt, limit, grammar, tools, sources, query, prediction)


def _check_outputs(req: ChatCompletionRequest) -> None:
    """What a text model cannot give is a 400, not an answer quietly without it."""
    if req.modalities is not None and set(req.modalities) - {"text"}:
        raise InvalidRequest(
            "This model writes text only: modalities must be ['text'].", param="modalities"
        )
    if req.audio is not None:
        raise InvalidRequest("This model cannot answer with audio.", param="audio")
    if req.web_search_options is not None:
        raise InvalidRequest(
            "Web search is not available here (Hearth searches your vector stores: see "
            "'retrieval').",
            param="web_search_options",
        )


def _constraints(
    runtime: ChatRuntime, req: ChatCompletionRequest
) -> tuple[str | None, ToolPlan | None]:
    """The grammar the output must follow (from response_format, grammar, json_schema or
    tools) and the tool plan, checked to compile."""
    grammar = request_grammar(runtime.model, req.response_format, req.grammar, req.json_schema)
    tools = plan_tools(req)
    if tools is not None:
        if grammar is not None:
            raise InvalidRequest(
                "Use tools or a response_format / grammar, not both: each constrains the "
                "whole output.",
                param="response_format",
            )
        check_compiles(runtime.model, tools.grammar, "tools")
        grammar = tools.grammar
    return grammar, tools


def _chat_prompt(runtime: ChatRuntime, messages: list[dict[str, Any]]) -> list[int]:
    try:
        # Tools are described in the system message (tools.py), not through the template.
        return runtime.prompts.chat(messages)
    except ChatTemplateError as e:
        raise InvalidRequest(str(e), param="messages", code="chat_template_error") from None


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Wire messages -> the plain dicts chat templates expect (content always a string)."""
    out = []
    for i, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            texts = []
            for part in content:
                kind = part.get("type")
                if kind == "refusal" and message.role == "assistant":
                    # An earlier answer that refused (OpenAI's assistant content part): what
                    # it said goes back as its text.
                    texts.append(str(part.get("refusal") or ""))
                    continue
                if kind != "text" or not isinstance(part.get("text"), str):
                    raise InvalidRequest(
                        f"Content parts of type {kind!r} are not supported by this model; "
                        "only 'text' parts are.",
                        param=f"messages.[{i}].content",
                    )
                texts.append(part["text"])
            content = "\n".join(texts)
        entry: dict[str, Any] = {
            # OpenAI's newer "developer" role is what templates know as "system".
            "role": "system" if message.role == "developer" else message.role,
            "content": content or "",
        }
        for key in ("name", "tool_calls", "tool_call_id"):
            value = getattr(message, key)
            if value is not None:
                entry[key] = value
        out.append(entry)
    return out


async def _sources(
    runtime: ChatRuntime, req: ChatCompletionRequest, messages: list[dict[str, Any]]
) -> tuple[str | None, list[Hit]]:
    """Search the requested vector stores with the latest user message (or the given
    query); the sources come back in the order the prompt cites them."""
    options = req.retrieval
    if options is None:
        return None, []
    retrieval = runtime.retrieval
    retrieval.require()
    for store_id in options.vector_store_ids:
        retrieval.vector_store(store_id, param="retrieval.vector_store_ids")
    retrieval.check_filters(options.filters, "retrieval.filters")
    query = options.query or latest_user_text(messages)
    if not query.strip():
        return query, []
    hits = await retrieval.search(
        options.vector_store_ids,
        query,
        options.max_num_results,
        options.mode,
        options.filters,
        options.rerank,
    )
    return query, order_sources(hits)


@dataclass(frozen=True)
class PreparedCompletion:
    model_id: str
    prompts: list[list[int]]  # token ids of each prompt
    texts: list[str]  # and its text
    grammar: str | None


async def prepare_completion(runtime: ChatRuntime, req: CompletionRequest) -> PreparedCompletion:
    model_id = check_model(runtime, req.model)
    if req.suffix:
        raise InvalidRequest("suffix is not supported by this model.", param="suffix")
    if req.logprobs is not None and req.echo and req.stream:
        raise InvalidRequest(
            "logprobs of the prompt (echo with logprobs) are not supported when streaming.",
            param="logprobs",
        )
    if req.best_of is not None and req.best_of != req.n:
        raise InvalidRequest("best_of other than n is not supported.", param="best_of")
    # llama-server takes response_format on /v1/completions too.
    grammar = await asyncio.to_thread(
        request_grammar, runtime.model, req.response_format, req.grammar, req.json_schema
    )
    tokens, texts = await asyncio.to_thread(_completion_prompts, runtime, req)
    return PreparedCompletion(model_id, tokens, texts, grammar)


def _completion_prompts(
    runtime: ChatRuntime, req: CompletionRequest
) -> tuple[list[list[int]], list[str]]:
    """Token ids and text of each prompt."""
    prompts = req.prompts()
    if not prompts:
        raise InvalidRequest("The prompt must not be empty.", param="prompt")
    tokens, texts = [], []
    model = runtime.model
    for prompt in prompts:
        if isinstance(prompt, str):
            ids = runtime.prompts.text(prompt)
            text = prompt
        else:
            bad = [t for t in prompt if not model.is_valid_token(t)]
            if bad:
                raise InvalidRequest(
                    f"Prompt token {bad[0]} is outside the vocabulary (0..{model.n_vocab - 1}).",
                    param="prompt",
                )
            ids = list(prompt)
            text = model.detokenize(ids)
        if not ids:
            raise InvalidRequest("The prompt must not be empty.", param="prompt")
        tokens.append(ids)
        texts.append(text)
    return tokens, texts
