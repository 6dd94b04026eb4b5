"""POST /api/embed (many inputs, `truncate` on by default) and the older /api/embeddings
(one prompt), over the same embedding engine as /v1/embeddings."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.body import read_json, validate_body
from server.api.embeddings import MAX_INPUTS
from server.api.errors import APIError
from server.api.ollama.catalog import find_model
from server.api.ollama.errors import ollama_errors
from server.api.ollama.wire import EmbeddingsRequest, EmbedRequest
from server.api.openapi import documented
from server.engine.embedder import Embedder
from server.runtime import Runtime


def _tokens(embedder: Embedder, texts: list[str], truncate: bool) -> list[list[int]]:
    out = []
    limit = embedder.max_tokens
    for i, text in enumerate(texts):
        tokens = embedder.tokenize(text)
        if len(tokens) > limit:
            if not truncate:
                raise APIError(
                    400,
                    f"input {i} is {len(tokens)} tokens long, more than the context length "
                    f"({limit}); shorten it or send truncate: true",
                    param="input",
                )
            tokens = tokens[: limit - 1] + tokens[-1:]  # keep the end-of-text token
        out.append(tokens)
    return out


def _embedder(runtime: Runtime, name: str) -> Embedder:
    find_model(runtime, name, kind="embedding")
    assert runtime.embedder is not None  # find_model found it
    return runtime.embedder


@documented("Ollama: embed", body=EmbedRequest)
@ollama_errors
async def embed(request: Request) -> Response:
    received = time.monotonic()
    runtime: Runtime = request.app.state.runtime
    req = validate_body(EmbedRequest, await read_json(request))
    embedder = _embedder(runtime, req.model)
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts or any(not t for t in texts):
        raise APIError(400, "input must be a non-empty string or strings", param="input")
    if len(texts) > MAX_INPUTS:
        raise APIError(400, f"at most {MAX_INPUTS} inputs per request", param="input")
    if req.dimensions is not None and req.dimensions != embedder.dim:
        raise APIError(
            400, f"this model's embeddings have {embedder.dim} dimensions", param="dimensions"
        )
    inputs = await asyncio.to_thread(_tokens, embedder, texts, req.truncate)
    vectors = await asyncio.wrap_future(embedder.submit(inputs))
    return JSONResponse(
        {
            "model": req.model,
            "embeddings": [v.tolist() for v in vectors],
            "total_duration": int((time.monotonic() - received) * 1e9),
            "load_duration": 0,
            "prompt_eval_count": sum(len(t) for t in inputs),
        }
    )


@documented("Ollama: embeddings (older)", body=EmbeddingsRequest)
@ollama_errors
async def embeddings(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = validate_body(EmbeddingsRequest, await read_json(request))
    embedder = _embedder(runtime, req.model)
    if not req.prompt:  # what Ollama answers an empty prompt
        return JSONResponse({"embedding": []})
    inputs = await asyncio.to_thread(_tokens, embedder, [req.prompt], True)
    (vector,) = await asyncio.wrap_future(embedder.submit(inputs))
    return JSONResponse({"embedding": vector.tolist()})
