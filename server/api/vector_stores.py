"""OpenAI's Vector Stores API over Hearth's retrieval store (LanceDB + ingestion worker)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from retrieval.catalog import IN_PROGRESS, FileBatch, VectorStore, VectorStoreFile
from retrieval.chunk_store import Hit
from retrieval.ingestion import ChunkingOptions
from retrieval.service import RetrievalService
from server.api.body import read_json, validate_body
from server.api.errors import APIError, bad_request
from server.api.listing import ListQuery, list_query, page
from server.api.openapi import documented
from server.chat.requests import Attributes, Metadata

# OpenAI's limit on the files of one batch.
MAX_BATCH_FILES = 2000
# The openai client polls a file's status; tell it to look again soon.
POLL_HEADERS = {"openai-poll-after-ms": "200"}


class StaticChunking(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_chunk_size_tokens: int = Field(ge=100, le=4096)
    chunk_overlap_tokens: int = Field(ge=0)


class ChunkingStrategy(BaseModel):
    """OpenAI's chunking_strategy: "auto" (the server's retrieval.chunk_tokens and
    chunk_overlap) or "static" with a size and an overlap of at most half of it. Hearth
    packs whole paragraphs into chunks of at most that size and overlaps the windows it
    cuts a longer paragraph into; a chunk longer than the embedding model's input is
    embedded by its beginning and found by full text whole."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400},
                }
            ]
        },
    )
    type: Literal["auto", "static"]
    static: StaticChunking | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ChunkingStrategy:
        if self.type == "static" and self.static is None:
            raise ValueError('a "static" chunking strategy needs "static" sizes')
        if self.type == "auto" and self.static is not None:
            raise ValueError('"static" sizes go with type "static"')
        if (
            self.static
            and self.static.chunk_overlap_tokens > self.static.max_chunk_size_tokens // 2
        ):
            raise ValueError("chunk_overlap_tokens may be at most half of max_chunk_size_tokens")
        return self

    def sizes(self) -> tuple[int, int] | None:
        """(tokens per chunk, overlap), or None for the server's."""
        if self.static is None:
            return None
        return self.static.max_chunk_size_tokens, self.static.chunk_overlap_tokens


def _sizes(strategy: ChunkingStrategy | None) -> tuple[int, int] | None:
    return strategy.sizes() if strategy is not None else None


class StoreExpiry(BaseModel):
    """OpenAI's vector store expiration policy: so many days after it was last used."""

    anchor: Literal["last_active_at"]
    days: int = Field(ge=1, le=365)


class CreateStore(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"name": "notes", "metadata": {"team": "docs"}}]},
    )
    name: str | None = Field(None, max_length=256)
    file_ids: list[str] = Field(default_factory=list, max_length=500)
    metadata: Metadata | None = None
    chunking_strategy: ChunkingStrategy | None = None  # for file_ids
    expires_after: StoreExpiry | None = None


class ModifyStore(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = None
    expires_after: StoreExpiry | None = None  # null: never expires; absent: unchanged


class AttachFile(BaseModel):
    model_config = ConfigDict(extra="allow")
    file_id: str
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategy | None = None


class UpdateFile(BaseModel):
    model_config = ConfigDict(
        extra="allow", json_schema_extra={"examples": [{"attributes": {"lang": "en"}}]}
    )
    attributes: Attributes | None


class BatchFile(BaseModel):
    model_config = ConfigDict(extra="allow")
    file_id: str
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategy | None = None


# One file of a batch: its id, attributes, and chunk sizes (None: the server's).
BatchItem = tuple[str, dict[str, Any], tuple[int, int] | None]


class CreateBatch(BaseModel):
    """OpenAI's file batch: `file_ids` (with `attributes` for all of them) or `files`,
    each with its own attributes."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"examples": [{"file_ids": ["file-abc123"]}]}
    )
    file_ids: list[str] | None = Field(None, min_length=1, max_length=MAX_BATCH_FILES)
    files: list[BatchFile] | None = Field(None, min_length=1, max_length=MAX_BATCH_FILES)
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategy | None = None

    def items(self) -> list[BatchItem]:
        """(file, attributes, chunk sizes) of each file; a file's own chunking strategy
        before the batch's."""
        if (self.file_ids is None) == (self.files is None):
            raise bad_request("Give exactly one of 'file_ids' and 'files'.", param="file_ids")
        shared = _sizes(self.chunking_strategy)
        if self.files is not None:
            return [
                (f.file_id, dict(f.attributes or {}), _sizes(f.chunking_strategy) or shared)
                for f in self.files
            ]
        attributes = dict(self.attributes or {})
        return [(file_id, attributes, shared) for file_id in self.file_ids or []]


class RankingOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    ranker: str | None = None
    score_threshold: float = Field(0.0, ge=0.0, le=1.0)


class SearchRequest(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"query": "how to install", "max_num_results": 3}]},
    )
    query: str | list[str]
    max_num_results: int = Field(10, ge=1, le=50)
    filters: dict[str, Any] | None = None
    # OpenAI's: {"ranker": "auto" | "none" | ..., "score_threshold": 0..1}. "none" skips
    # the reranker; results scoring below the threshold are dropped.
    ranking_options: RankingOptions | None = None
    # Hearth extensions: how to search (hybrid = vector + full text + exact terms, fused),
    # and whether the reranker (retrieval.rerank_model) reorders the results.
    mode: Literal["hybrid", "vector", "text"] = "hybrid"
    rerank: bool | None = None


class StoreFileListQuery(ListQuery):
    filter: Literal["in_progress", "completed", "failed", "cancelled"] | None = None


def _retrieval(request: Request) -> RetrievalService:
    """The retrieval service, or FeatureDisabled when there is no embedding model."""
    retrieval: RetrievalService = request.app.state.runtime.retrieval
    retrieval.require()
    return retrieval


def store_object(store: VectorStore) -> dict[str, Any]:
    return {
        "id": store.id,
        "object": "vector_store",
        "created_at": store.created_at,
        "name": store.name,
        "usage_bytes": 0,
        "file_counts": store.file_counts,
        "status": (
            "expired"
            if store.expired()
            else "in_progress"
            if store.file_counts.get(IN_PROGRESS)
            else "completed"
        ),
        "expires_after": (
            None
            if store.expires_after_days is None
            else {"anchor": "last_active_at", "days": store.expires_after_days}
        ),
        "expires_at": store.expires_at,
        "last_active_at": store.last_active_at,
        "metadata": store.metadata,
    }


def file_object(vsf: VectorStoreFile, default_chunking: ChunkingOptions) -> dict[str, Any]:
    size, overlap = vsf.chunking or (default_chunking.max_tokens, default_chunking.overlap_tokens)
    return {
        "id": vsf.file_id,
        "object": "vector_store.file",
        "usage_bytes": 0,
        "created_at": vsf.created_at,
        "vector_store_id": vsf.vector_store_id,
        "status": vsf.status,
        "last_error": vsf.last_error,
        "chunking_strategy": {
            "type": "static",
            "static": {"max_chunk_size_tokens": size, "chunk_overlap_tokens": overlap},
        },
        "attributes": vsf.attributes,
        "chunk_count": vsf.chunks,  # Hearth extension
    }


def batch_object(batch: FileBatch) -> dict[str, Any]:
    return {
        "id": batch.id,
        "object": "vector_store.files_batch",
        "created_at": batch.created_at,
        "vector_store_id": batch.vector_store_id,
        "status": batch.status,
        "file_counts": batch.file_counts,
    }


def hit_object(hit: Hit) -> dict[str, Any]:
    return {
        "file_id": hit.file_id,
        "filename": hit.filename,
        "score": hit.score,
        "attributes": hit.attributes,
        "content": [{"type": "text", "text": hit.text}],
        # Hearth's additions: where in the document the chunk is.
        "page": hit.page,
        "chunk_index": hit.chunk_index,
        "position": hit.position,
        "heading": hit.heading,
        "char_start": hit.char_start,
        "char_end": hit.char_end,
    }


def _attach(
    retrieval: RetrievalService,
    store_id: str,
    file_id: str,
    attributes: dict[str, Any],
    chunking: tuple[int, int] | None,
) -> VectorStoreFile:
    if retrieval.files.get(file_id) is None:
        raise APIError(
            404, f"No file found with id '{file_id}'.", param="file_id", code="file_not_found"
        )
    return retrieval.attach(store_id, file_id, attributes, chunking)


@documented("Create a vector store", body=CreateStore, creates="store_id")
async def create_store(request: Request) -> Response:
    retrieval = _retrieval(request)
    body = validate_body(CreateStore, await read_json(request))
    missing = [f for f in body.file_ids if retrieval.files.get(f) is None]
    if missing:
        raise APIError(
            404, f"No file found with id '{missing[0]}'.", param="file_ids", code="file_not_found"
        )
    days = body.expires_after.days if body.expires_after is not None else None
    store = retrieval.catalog.create_store(body.name, body.metadata or {}, days)
    for file_id in body.file_ids:
        retrieval.attach(store.id, file_id, {}, _sizes(body.chunking_strategy))
    return JSONResponse(store_object(retrieval.vector_store(store.id)))


@documented("List vector stores", query=ListQuery)
async def list_stores(request: Request) -> Response:
    retrieval = _retrieval(request)
    query = list_query(request, ListQuery)
    stores = retrieval.catalog.list_stores(query.order)
    return JSONResponse(page([store_object(s) for s in stores], query, default_limit=20))


@documented("Retrieve a vector store")
async def retrieve_store(request: Request) -> Response:
    retrieval = _retrieval(request)
    return JSONResponse(store_object(retrieval.vector_store(request.path_params["store_id"])))


@documented("Modify a vector store", body=ModifyStore)
async def modify_store(request: Request) -> Response:
    retrieval = _retrieval(request)
    store_id = request.path_params["store_id"]
    retrieval.vector_store(store_id)
    body = validate_body(ModifyStore, await read_json(request))
    days: int | Literal["unchanged"] | None = "unchanged"
    if "expires_after" in body.model_fields_set:
        days = body.expires_after.days if body.expires_after is not None else None
    store = retrieval.catalog.update_store(store_id, body.name, body.metadata, days)
    assert store is not None
    return JSONResponse(store_object(store))


@documented("Delete a vector store")
async def delete_store(request: Request) -> Response:
    retrieval = _retrieval(request)
    store_id = request.path_params["store_id"]
    retrieval.vector_store(store_id)
    await asyncio.to_thread(retrieval.delete_store, store_id)
    return JSONResponse({"id": store_id, "object": "vector_store.deleted", "deleted": True})


@documented("Add a file to a vector store (it is ingested)", body=AttachFile)
async def attach_file(request: Request) -> Response:
    retrieval = _retrieval(request)
    store_id = request.path_params["store_id"]
    retrieval.vector_store(store_id)
    body = validate_body(AttachFile, await read_json(request))
    attributes = dict(body.attributes or {})
    vsf = _attach(retrieval, store_id, body.file_id, attributes, _sizes(body.chunking_strategy))
    return JSONResponse(file_object(vsf, retrieval.chunking), headers=POLL_HEADERS)


@documented("List a vector store's files", query=StoreFileListQuery)
async def list_store_files(request: Request) -> Response:
    retrieval = _retrieval(request)
    store_id = request.path_params["store_id"]
    retrieval.vector_store(store_id)
    query = list_query(request, StoreFileListQuery)
    files = retrieval.catalog.list_files(store_id, query.filter, query.order)
    return JSONResponse(
        page([file_object(f, retrieval.chunking) for f in files], query, default_limit=20)
    )


def _store_file_or_404(retrieval: RetrievalService, store_id: str, file_id: str) -> VectorStoreFile:
    retrieval.vector_store(store_id)
    vsf = retrieval.catalog.get_file(store_id, file_id)
    if vsf is None:
        raise APIError(
            404,
            f"No file '{file_id}' in vector store '{store_id}'.",
            param="file_id",
            code="file_not_found",
        )
    return vsf


@documented("Retrieve a vector store file")
async def retrieve_store_file(request: Request) -> Response:
    retrieval = _retrieval(request)
    vsf = _store_file_or_404(
        retrieval, request.path_params["store_id"], request.path_params["file_id"]
    )
    return JSONResponse(file_object(vsf, retrieval.chunking), headers=POLL_HEADERS)


@documented("Update a vector store file's attributes", body=UpdateFile)
async def update_store_file(request: Request) -> Response:
    retrieval = _retrieval(request)
    store_id, file_id = request.path_params["store_id"], request.path_params["file_id"]
    _store_file_or_404(retrieval, store_id, file_id)
    body = validate_body(UpdateFile, await read_json(request))
    vsf = retrieval.catalog.update_attributes(store_id, file_id, dict(body.attributes or {}))
    if vsf is None:  # detached meanwhile
        _store_file_or_404(retrieval, store_id, file_id)
    assert vsf is not None
    return JSONResponse(file_object(vsf, retrieval.chunking))


@documented("Retrieve a vector store file's parsed content (its chunks, in order)")
async def store_file_content(request: Request) -> Response:
    retrieval = _retrieval(request)
    store_id, file_id = request.path_params["store_id"], request.path_params["file_id"]
    _store_file_or_404(retrieval, store_id, file_id)
    assert retrieval.store is not None
    texts = await asyncio.to_thread(retrieval.store.texts, store_id, file_id)
    return JSONResponse(
        {
            "object": "vector_store.file_content.page",
            "data": [{"type": "text", "text": t} for t in texts],
            "has_more": False,
            "next_page": None,
        }
    )


@documented("Remove a file from a vector store")
async def detach_file(request: Request) -> Response:
    retrieval = _retrieval(request)
    store_id, file_id = request.path_params["store_id"], request.path_params["file_id"]
    _store_file_or_404(retrieval, store_id, file_id)
    await asyncio.to_thread(retrieval.detach, store_id, file_id)
    return JSONResponse({"id": file_id, "object": "vector_store.file.deleted", "deleted": True})


@documented("Add files to a vector store together (a file batch)", body=CreateBatch)
async def create_batch(request: Request) -> Response:
    retrieval = _retrieval(request)
    store_id = request.path_params["store_id"]
    retrieval.vector_store(store_id)
    items = validate_body(CreateBatch, await read_json(request)).items()
    # Up to 2,000 files, a database write each: off the event loop.
    batch = await asyncio.to_thread(_attach_batch, retrieval, store_id, items)
    return JSONResponse(batch_object(batch), headers=POLL_HEADERS)


def _attach_batch(retrieval: RetrievalService, store_id: str, items: list[BatchItem]) -> FileBatch:
    # Every file must exist before any is attached: a bad id attaches nothing.
    missing = [f for f, _, _ in items if retrieval.files.get(f) is None]
    if missing:
        raise APIError(
            404, f"No file found with id '{missing[0]}'.", param="file_ids", code="file_not_found"
        )
    attached = {f: retrieval.attach(store_id, f, attrs, sizes) for f, attrs, sizes in items}
    return retrieval.catalog.create_batch(store_id, list(attached.values()))


def _batch_or_404(retrieval: RetrievalService, store_id: str, batch_id: str) -> FileBatch:
    retrieval.vector_store(store_id)
    batch = retrieval.catalog.get_batch(store_id, batch_id)
    if batch is None:
        raise APIError(
            404,
            f"No file batch '{batch_id}' in vector store '{store_id}'.",
            param="batch_id",
            code="not_found",
        )
    return batch


@documented("Retrieve a vector store file batch")
async def retrieve_batch(request: Request) -> Response:
    retrieval = _retrieval(request)
    p = request.path_params
    return JSONResponse(
        batch_object(_batch_or_404(retrieval, p["store_id"], p["batch_id"])),
        headers=POLL_HEADERS,
    )


@documented("Cancel a vector store file batch (files not yet ingested are not)")
async def cancel_batch(request: Request) -> Response:
    retrieval = _retrieval(request)
    store_id, batch_id = request.path_params["store_id"], request.path_params["batch_id"]
    _batch_or_404(retrieval, store_id, batch_id)
    batch = await asyncio.to_thread(retrieval.cancel_batch, store_id, batch_id)
    if batch is None:  # deleted meanwhile
        _batch_or_404(retrieval, store_id, batch_id)
    assert batch is not None
    return JSONResponse(batch_object(batch))


@documented("List the files of a vector store file batch", query=StoreFileListQuery)
async def list_batch_files(request: Request) -> Response:
    retrieval = _retrieval(request)
    store_id, batch_id = request.path_params["store_id"], request.path_params["batch_id"]
    _batch_or_404(retrieval, store_id, batch_id)
    query = list_query(request, StoreFileListQuery)
    files = retrieval.catalog.batch_files(batch_id, query.filter, query.order)
    return JSONResponse(
        page([file_object(f, retrieval.chunking) for f in files], query, default_limit=20)
    )


@documented("Search a vector store", body=SearchRequest)
async def search_store(request: Request) -> Response:
    retrieval = _retrieval(request)
    store_id = request.path_params["store_id"]
    retrieval.vector_store(store_id)
    body = validate_body(SearchRequest, await read_json(request))
    query = " ".join(body.query) if isinstance(body.query, list) else body.query
    if not query.strip():
        raise bad_request("'query' must not be empty.", param="query")
    retrieval.check_filters(body.filters, "filters")
    ranking = body.ranking_options
    use_reranker = False if ranking is not None and ranking.ranker == "none" else body.rerank
    hits = await retrieval.search(
        [store_id], query, body.max_num_results, body.mode, body.filters, use_reranker
    )
    if ranking is not None and ranking.score_threshold > 0:
        hits = [h for h in hits if h.score >= ranking.score_threshold]
    return JSONResponse(
        {
            "object": "vector_store.search_results.page",
            "search_query": body.query if isinstance(body.query, list) else [body.query],
            "data": [hit_object(h) for h in hits],
            "has_more": False,
            "next_page": None,
        }
    )
