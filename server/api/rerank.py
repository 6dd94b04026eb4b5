"""POST /v1/rerank (also /rerank and /v1/reranking, as llama-server answers them).

The request and response are the shape Jina, Cohere and llama-server share, which
LangChain's and LlamaIndex's rerankers and Open WebUI's external reranker speak:
{"query", "documents": [str | {"text": str}], "top_n"?, "return_documents"?} →
{"results": [{"index", "relevance_score", "document"?}], best first}. relevance_score is
in 0..1 (the cross-encoder's logit through a sigmoid), as Cohere's and Jina's are.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from retrieval.reranking import relevance
from server.api.body import read_json, validate_body
from server.api.errors import APIError, bad_request
from server.api.openapi import documented
from server.engine.reranker import Reranker
from server.ids import new_id
from server.runtime import Runtime

# Cohere's limit; each document is one model pass.
MAX_DOCUMENTS = 1000


class TextDocument(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str


class RerankRequest(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "query": "how do I skip the tests?",
                    "documents": ["nocheck: do not run the test suite", "nostrip: keep symbols"],
                    "top_n": 1,
                }
            ]
        },
    )
    query: str
    documents: list[str | TextDocument] = Field(max_length=MAX_DOCUMENTS)
    model: str | None = None
    top_n: int | None = None
    return_documents: bool = False


def _reranker(runtime: Runtime, model: str | None) -> Reranker:
    reranker = runtime.reranker
    if reranker is None:
        raise APIError(
            404,
            "This server has no reranking model: start it with --rerank-model FILE.gguf "
            "(retrieval.rerank_model), a cross-encoder such as bge-reranker-v2-m3.",
            param="model",
            code="model_not_found",
        )
    if model is not None and model != runtime.reranker_model_id:
        raise APIError(
            404,
            f"The model '{model}' does not exist or cannot rerank. Reranking comes from "
            f"'{runtime.reranker_model_id}'.",
            param="model",
            code="model_not_found",
        )
    return reranker


@documented("Rerank documents by their relevance to a query", body=RerankRequest)
async def rerank(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    req = validate_body(RerankRequest, await read_json(request))
    reranker = _reranker(runtime, req.model)
    if not req.query.strip():
        raise bad_request("'query' must not be empty.", param="query")
    if not req.documents:
        raise bad_request("'documents' must hold at least one document.", param="documents")
    texts = [d if isinstance(d, str) else d.text for d in req.documents]
    top_n = len(texts) if req.top_n is None else req.top_n
    if top_n < 1:
        raise bad_request("'top_n' must be at least 1.", param="top_n")
    # Off the event loop: a thousand documents take the tokenizer a while.
    pairs = await asyncio.to_thread(
        lambda: [reranker.pair_tokens(req.query, text) for text in texts]
    )
    logits = await asyncio.wrap_future(reranker.submit(pairs))
    order = sorted(range(len(texts)), key=lambda i: float(logits[i]), reverse=True)
    results: list[dict[str, Any]] = []
    for i in order[:top_n]:
        result: dict[str, Any] = {"index": i, "relevance_score": relevance(float(logits[i]))}
        if req.return_documents:
            result["document"] = {"text": texts[i]}
        results.append(result)
    n_tokens = sum(len(p) for p in pairs)
    return JSONResponse(
        {
            "id": new_id("rerank-"),
            "object": "list",
            "model": runtime.reranker_model_id,
            "results": results,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }
    )
