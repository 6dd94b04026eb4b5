"""POST /tokenize and /detokenize, shaped as llama-server's (handy for clients and tests)."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.api.body import read_json, validate_body
from server.api.errors import bad_request
from server.api.openapi import documented
from server.runtime import Runtime


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(
        extra="allow", json_schema_extra={"examples": [{"content": "Hello world"}]}
    )
    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(
        extra="allow", json_schema_extra={"examples": [{"tokens": [19556, 905]}]}
    )
    tokens: list[int] = Field(default_factory=list)


@documented("Tokenize text (llama-server's shape)", body=TokenizeRequest)
async def tokenize(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = validate_body(TokenizeRequest, await read_json(request))
    # Off the event loop: a body of a few MiB takes the tokenizer a while.
    ids = await asyncio.to_thread(
        runtime.model.tokenize, req.content, req.add_special, req.parse_special
    )
    if not req.with_pieces:
        return JSONResponse({"tokens": ids})
    pieces = []
    for token in ids:
        raw = runtime.model.token_bytes(token)
        try:
            piece: str | list[int] = raw.decode("utf-8")
        except UnicodeDecodeError:
            piece = list(raw)  # part of a multi-byte character, as llama-server reports it
        pieces.append({"id": token, "piece": piece})
    return JSONResponse({"tokens": pieces})


@documented("Token ids back to text", body=DetokenizeRequest)
async def detokenize(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = validate_body(DetokenizeRequest, await read_json(request))
    bad = [t for t in req.tokens if not runtime.model.is_valid_token(t)]
    if bad:
        raise bad_request(f"token {bad[0]} is outside the vocabulary", param="tokens")
    return JSONResponse({"content": runtime.model.detokenize(req.tokens)})
