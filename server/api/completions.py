"""POST /v1/completions (OpenAI's legacy text completions)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

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
from server.api.logprobs import completion_logprobs, echo_logprobs
from server.api.openapi import documented
from server.api.schemas import CompletionRequest
from server.api.sse import DONE, dumps, error_events, sse_response
from server.api.structured import request_grammar
from server.async_engine import GenerationStream
from server.engine.logprobs import TokenLogprob
from server.engine.request import FinishReason
from server.runtime import Runtime


def parse_request(body: dict[str, Any]) -> CompletionRequest:
    req = validate_body(CompletionRequest, body)
    if req.suffix:
        raise bad_request("suffix is not supported by this model.", param="suffix")
    if req.logprobs is not None and req.echo and req.stream:
        raise bad_request(
            "logprobs of the prompt (echo with logprobs) are not supported when streaming.",
            param="logprobs",
        )
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request("best_of other than n is not supported.", param="best_of")
    return req


def prompt_tokens(runtime: Runtime, req: CompletionRequest) -> tuple[list[list[int]], list[str]]:
    """Token ids and text of each prompt."""
    prompts = req.prompts()
    if not prompts:
        raise bad_request("The prompt must not be empty.", param="prompt")
    tokens, texts = [], []
    for prompt in prompts:
        if isinstance(prompt, str):
            ids = runtime.text_prompt_tokens(prompt)
            text = prompt
        else:
            bad = [t for t in prompt if not runtime.model.is_valid_token(t)]
            if bad:
                raise bad_request(
                    f"Prompt token {bad[0]} is outside the vocabulary "
                    f"(0..{runtime.model.n_vocab - 1}).",
                    param="prompt",
                )
            ids = list(prompt)
            text = runtime.model.detokenize(ids)
        if not ids:
            raise bad_request("The prompt must not be empty.", param="prompt")
        tokens.append(ids)
        texts.append(text)
    return tokens, texts


@documented("Create a text completion", body=CompletionRequest)
async def completions(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = parse_request(await read_json(request))
    model_id = check_model(runtime, req.model)
    # llama-server takes response_format on /v1/completions too.
    grammar = await asyncio.to_thread(
        request_grammar, runtime.model, req.response_format, req.grammar, req.json_schema
    )
    tokens, texts = await asyncio.to_thread(prompt_tokens, runtime, req)
    envelope = Envelope.new("cmpl", "text_completion", model_id)
    if req.echo and req.logprobs is not None:
        return JSONResponse(await scored_prompts(request, runtime, req, tokens, texts, envelope))
    if req.max_tokens == 0:  # only the prompt (with echo) and its usage, as OpenAI does
        results = [
            ChoiceResult(
                text=t if req.echo else "",
                finish_reason=FinishReason.LENGTH,
                prompt_tokens=len(ids),
            )
            for ids, t in zip(tokens, texts, strict=True)
            for _ in range(req.n)
        ]
        return JSONResponse(response_body(results, req.n, envelope))
    limits = [max_tokens_for(runtime, req.max_tokens, len(ids)) for ids in tokens]
    streams = start_streams(runtime, req, tokens, limits, req.logprobs, grammar)
    echoes = [t for t in texts for _ in range(req.n)] if req.echo else None
    if req.stream:
        events = stream_chunks(runtime, streams, req, echoes, envelope)
        return sse_response(events, on_close=lambda: cancel_all(streams))
    results = await collect(request, streams)
    if echoes:
        for r, echo in zip(results, echoes, strict=True):
            r.text = echo + r.text
    body = response_body(results, req.n, envelope)
    if req.logprobs is not None:
        for choice, r in zip(body["choices"], results, strict=True):
            choice["logprobs"] = completion_logprobs(runtime.model, r.logprobs)
    return JSONResponse(body)


async def scored_prompts(
    request: Request,
    runtime: Runtime,
    req: CompletionRequest,
    tokens: list[list[int]],
    texts: list[str],
    envelope: Envelope,
) -> dict[str, Any]:
    """echo + logprobs: every prompt token's log-probability, then the completion's (how
    lm-evaluation-harness scores a continuation). max_tokens 0 scores the prompt alone: the
    engine still samples one token, which is dropped."""
    assert req.logprobs is not None
    limits = [max(1, max_tokens_for(runtime, req.max_tokens, len(ids))) for ids in tokens]
    streams = start_streams(
        runtime, req, tokens, limits, req.logprobs, prompt_logprobs=req.logprobs
    )
    results = await collect(request, streams)
    prompts = [(ids, text) for ids, text in zip(tokens, texts, strict=True) for _ in range(req.n)]
    for r, (_, text) in zip(results, prompts, strict=True):
        if req.max_tokens == 0:
            r.text, r.logprobs, r.completion_tokens = "", [], 0
            r.finish_reason = FinishReason.LENGTH
        r.text = text + r.text
    body = response_body(results, req.n, envelope)
    for choice, r, (ids, _) in zip(body["choices"], results, prompts, strict=True):
        choice["logprobs"] = echo_logprobs(
            runtime.model, ids[0], r.prompt_logprobs or [], r.logprobs
        )
    return body


def response_body(results: list[ChoiceResult], n: int, envelope: Envelope) -> dict[str, Any]:
    choices = [
        {"index": i, "text": r.text, "logprobs": None, "finish_reason": str(r.finish_reason)}
        for i, r in enumerate(results)
    ]
    return envelope.body(choices, usage=total_usage(results, n))


async def stream_chunks(
    runtime: Runtime,
    streams: list[GenerationStream],
    req: CompletionRequest,
    echoes: list[str] | None,
    envelope: Envelope,
) -> AsyncIterator[str]:
    # With include_usage, OpenAI sends "usage": null on every chunk but the last.
    no_usage = {"usage": None} if req.include_usage else {}

    def chunk(
        index: int | None,
        text: str = "",
        finish: str | None = None,
        logprobs: Any = None,
        **extra: Any,
    ) -> str:
        choices = (
            []
            if index is None
            else [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]
        )
        return dumps(envelope.body(choices, **{**no_usage, **extra}))

    if echoes:
        for i, echo in enumerate(echoes):
            yield chunk(i, echo)
    results = [ChoiceResult() for _ in streams]  # for the usage chunk
    # Logprobs of tokens whose text is still held back go out with the text, later.
    pending: list[list[TokenLogprob]] = [[] for _ in streams]
    offsets = [len(e) for e in echoes] if echoes else [0] * len(streams)
    async for index, output in merged(streams):
        if output.finish_reason is FinishReason.ERROR:
            for event in error_events(output.error):
                yield event
            return
        if output.logprobs:
            pending[index].extend(output.logprobs)
        if not output.finished and not output.text:
            continue
        logprobs = None
        if req.logprobs is not None:
            logprobs = completion_logprobs(runtime.model, pending[index], offsets[index])
            pending[index] = []
        offsets[index] += len(output.text)
        finish = str(output.finish_reason) if output.finished else None
        if output.finished:
            results[index].add(output)
        yield chunk(index, output.text, finish, logprobs)
    if req.include_usage:
        yield chunk(None, usage=total_usage(results, req.n))
    yield DONE
