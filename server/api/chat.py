"""POST /v1/chat/completions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from retrieval.augmentation import augment, citations, latest_user_text, order_sources
from retrieval.store import Hit
from server.api.body import read_json, validate_body
from server.api.errors import bad_request
from server.api.generation import (
    ChoiceResult,
    Envelope,
    cancel_all,
    check_model,
    collect,
    max_tokens_for,
    merged,
    start_streams,
    total_usage,
)
from server.api.logprobs import chat_logprobs
from server.api.openapi import documented
from server.api.schemas import ChatCompletionRequest, ChatMessage
from server.api.sse import DONE, dumps, error_events, sse_response
from server.api.structured import check_compiles, request_grammar
from server.api.tools import AnswerStream, ToolPlan, history_messages, parse_answer, plan_tools
from server.api.vector_stores import check_filters, require_retrieval, store_or_404
from server.async_engine import GenerationStream
from server.chat_template import ChatTemplateError
from server.engine.logprobs import TokenLogprob
from server.engine.request import FinishReason
from server.runtime import Runtime


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Wire messages → the plain dicts chat templates expect (content always a string)."""
    out = []
    for i, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            texts = []
            for part in content:
                kind = part.get("type")
                if kind != "text" or not isinstance(part.get("text"), str):
                    raise bad_request(
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


async def retrieve_sources(
    request: Request, req: ChatCompletionRequest, messages: list[dict[str, Any]]
) -> list[Hit]:
    """Search the requested vector stores with the latest user message (or the given query)."""
    options = req.retrieval
    if options is None:
        return []
    retrieval = require_retrieval(request)
    for store_id in options.vector_store_ids:
        store_or_404(retrieval, store_id, param="retrieval.vector_store_ids")
    check_filters(options.filters, "retrieval.filters")
    query = options.query or latest_user_text(messages)
    if not query.strip() or not options.vector_store_ids:
        return []
    hits = await retrieval.search(
        options.vector_store_ids, query, options.max_num_results, options.mode, options.filters
    )
    return order_sources(hits)


def parse_request(body: dict[str, Any]) -> ChatCompletionRequest:
    req = validate_body(ChatCompletionRequest, body)
    if req.top_logprobs and not req.logprobs:
        raise bad_request("top_logprobs requires logprobs to be true.", param="top_logprobs")
    return req


@dataclass(frozen=True)
class PreparedChat:
    """A chat request turned into what the engine runs."""

    prompt: list[int]
    max_tokens: int
    grammar: str | None
    tools: ToolPlan | None
    sources: list[Hit]


def _constraints(
    runtime: Runtime, req: ChatCompletionRequest
) -> tuple[str | None, ToolPlan | None]:
    """The grammar the output must follow (from response_format, grammar, json_schema or
    tools) and the tool plan, checked to compile. Runs in a worker thread: big schemas
    take a while to convert."""
    grammar = request_grammar(runtime.model, req.response_format, req.grammar, req.json_schema)
    tools = plan_tools(req)
    if tools is not None:
        if grammar is not None:
            raise bad_request(
                "Use tools or a response_format / grammar, not both: each constrains the "
                "whole output.",
                param="response_format",
            )
        check_compiles(runtime.model, tools.grammar, "tools")
        grammar = tools.grammar
    return grammar, tools


def _prompt(runtime: Runtime, messages: list[dict[str, Any]]) -> list[int]:
    try:
        # Tools are described in the system message (tools.py), not through the template.
        return runtime.chat_prompt_tokens(messages)
    except ChatTemplateError as e:
        raise bad_request(str(e), param="messages", code="chat_template_error") from None


async def prepare_chat(
    request: Request, runtime: Runtime, req: ChatCompletionRequest
) -> PreparedChat:
    """Messages (+ retrieved sources, + tool instructions) → prompt tokens, token limit and
    the grammar constraining the output; every check that can fail happens here. The
    CPU-heavy parts (grammars, template, tokenizer) run off the event loop."""
    grammar, tools = await asyncio.to_thread(_constraints, runtime, req)
    messages = history_messages(template_messages(req.messages), runtime.template.source)
    sources = await retrieve_sources(request, req, messages)
    messages = augment(messages, sources)
    if tools is not None:
        messages = tools.apply(messages)
    prompt = await asyncio.to_thread(_prompt, runtime, messages)
    limit = max_tokens_for(runtime, req.token_limit, len(prompt))
    return PreparedChat(prompt, limit, grammar, tools, sources)


@documented("Create a chat completion", body=ChatCompletionRequest)
async def chat_completions(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = parse_request(await read_json(request))
    model_id = check_model(runtime, req.model)
    prepared = await prepare_chat(request, runtime, req)
    tools, sources = prepared.tools, prepared.sources
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    streams = start_streams(
        runtime, req, [prepared.prompt], [prepared.max_tokens], logprobs, prepared.grammar
    )
    envelope = Envelope.new("chatcmpl", "chat.completion", model_id)
    cited = citations(sources) if req.retrieval is not None else None
    if req.stream:
        events = stream_chunks(runtime, streams, req, envelope, cited, tools is not None)
        return sse_response(events, on_close=lambda: cancel_all(streams))
    results = await collect(request, streams)
    body = response_body(results, req.n, envelope, tools is not None)
    if cited is not None:
        body["citations"] = cited  # Hearth extension: the sources the prompt carried
    if req.logprobs:
        for choice, r in zip(body["choices"], results, strict=True):
            choice["logprobs"] = chat_logprobs(runtime.model, r.logprobs)
    return JSONResponse(body)


def response_body(
    results: list[ChoiceResult], n: int, envelope: Envelope, with_tools: bool = False
) -> dict[str, Any]:
    choices = []
    for i, r in enumerate(results):
        message: dict[str, Any] = {"role": "assistant", "content": r.text, "refusal": None}
        finish = str(r.finish_reason)
        if with_tools:
            content, calls = parse_answer(r.text)
            message["content"] = content
            if calls is not None:
                message["tool_calls"] = calls
                finish = "tool_calls"
        choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": finish})
    return envelope.body(choices, usage=total_usage(results, n))


async def stream_chunks(
    runtime: Runtime,
    streams: list[GenerationStream],
    req: ChatCompletionRequest,
    envelope: Envelope,
    cited: list[dict[str, Any]] | None = None,
    with_tools: bool = False,
) -> AsyncIterator[str]:
    chunks = replace(envelope, object="chat.completion.chunk")
    # With include_usage, OpenAI sends "usage": null on every chunk but the last.
    no_usage = {"usage": None} if req.include_usage else {}

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return dumps(chunks.body(choices, **{**no_usage, **extra}))

    def choice(
        index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None
    ) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    for i in range(len(streams)):
        yield chunk([choice(i, {"role": "assistant", "content": ""})])
    results = [ChoiceResult() for _ in streams]  # for the usage chunk
    # With tools, the model writes JSON: answers are decoded from it as they stream, tool
    # calls go out whole when the choice ends.
    answers = [AnswerStream() for _ in streams] if with_tools else None
    # Logprobs of tokens whose text is still held back go out with the text, later.
    pending: list[list[TokenLogprob]] = [[] for _ in streams]
    async for index, output in merged(streams):
        if output.finish_reason is FinishReason.ERROR:
            for event in error_events(output.error):
                yield event
            return
        if output.logprobs:
            pending[index].extend(output.logprobs)
        if answers is not None:
            content = answers[index].feed(output.text)
            if content:
                yield chunk([choice(index, {"content": content})])
            if output.finished:
                results[index].add(output)
                rest, calls = answers[index].finish()
                if rest:
                    yield chunk([choice(index, {"content": rest})])
                finish = str(output.finish_reason)
                if calls is not None:
                    deltas = [{"index": k, **call} for k, call in enumerate(calls)]
                    yield chunk([choice(index, {"tool_calls": deltas})])
                    finish = "tool_calls"
                yield chunk([choice(index, {}, finish)])
            continue
        if output.text:
            logprobs = None
            if req.logprobs:
                logprobs = chat_logprobs(runtime.model, pending[index])
                pending[index] = []
            yield chunk([choice(index, {"content": output.text}, logprobs=logprobs)])
        if output.finished:
            results[index].add(output)
            yield chunk([choice(index, {}, str(output.finish_reason))])
    if req.include_usage:
        yield chunk([], usage=total_usage(results, req.n))
    if cited is not None:
        yield chunk([], citations=cited)
    yield DONE
