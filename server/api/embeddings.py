"""POST /v1/embeddings."""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.body import read_json, validate_body
from server.api.errors import APIError, bad_request
from server.api.openapi import documented
from server.engine.embedder import Embedder
from server.runtime import Runtime

MAX_INPUTS = 2048


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(
        extra="allow", json_schema_extra={"examples": [{"input": ["a sentence to embed"]}]}
    )

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


def _embedder(runtime: Runtime, model: str | None) -> Embedder:
    embedder = runtime.embedder
    if embedder is None:
        raise APIError(
            404,
            "This server has no embedding model (embedding.enabled is off).",
            param="model",
            code="model_not_found",
        )
    if model is not None and model != runtime.embedding_model_id:
        hint = " It is a chat model." if model == runtime.model_id else ""
        raise APIError(
            404,
            f"The model '{model}' does not exist or cannot make embeddings.{hint} "
            f"Embeddings come from '{runtime.embedding_model_id}'.",
            param="model",
            code="model_not_found",
        )
    return embedder


def _token_inputs(runtime: Runtime, embedder: Embedder, req: EmbeddingRequest) -> list[list[int]]:
    raw = req.input
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif raw and all(isinstance(x, int) for x in raw):
        items = [raw]  # one input given as token ids
    else:
        items = list(raw)
    if not items:
        raise bad_request("'input' must not be empty.", param="input")
    if len(items) > MAX_INPUTS:
        raise bad_request(
            f"At most {MAX_INPUTS} inputs are allowed per request, got {len(items)}.", param="input"
        )
    model = embedder.model
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            if not item:
                raise bad_request(f"Input {i} is an empty string.", param="input")
            tokens = embedder.tokenize(item)
        else:
            if not item:
                raise bad_request(f"Input {i} is an empty token array.", param="input")
            bad = [t for t in item if not model.is_valid_token(t)]
            if bad:
                raise bad_request(
                    f"Input {i} has token {bad[0]}, outside the vocabulary "
                    f"(0..{model.n_vocab - 1}).",
                    param="input",
                )
            tokens = list(item)
        if len(tokens) > embedder.max_tokens:
            raise bad_request(
                f"Input {i} is {len(tokens)} tokens long; this model's maximum context "
                f"length is {embedder.max_tokens} tokens. Please shorten it.",
                param="input",
                code="context_length_exceeded",
            )
        out.append(tokens)
    return out


def _encode(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        # OpenAI sends little-endian float32 bytes, base64-encoded.
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


@documented("Create embeddings", body=EmbeddingRequest)
async def embeddings(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = validate_body(EmbeddingRequest, await read_json(request))
    embedder = _embedder(runtime, req.model)
    if req.dimensions is not None and req.dimensions != embedder.dim:
        raise bad_request(
            f"'{runtime.embedding_model_id}' does not support 'dimensions': its vectors "
            f"always have {embedder.dim} dimensions.",
            param="dimensions",
        )
    # Off the event loop: 2048 long inputs take the tokenizer a while.
    inputs = await asyncio.to_thread(_token_inputs, runtime, embedder, req)
    vectors = await asyncio.wrap_future(embedder.submit(inputs))
    n_tokens = sum(len(t) for t in inputs)
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(v, req.encoding_format)}
                for i, v in enumerate(vectors)
            ],
            "model": runtime.embedding_model_id,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }
    )
