"""Chunks of every vector store in one LanceDB table: vectors, text and where they came from.

Rows are keyed by (vector store, file, chunk index), written with merge_insert, so running
an ingestion job again never duplicates a row. Each row keeps the text shown and cited apart
from what was embedded and full-text indexed (the chunk's context, then its text). Search is
by vector, by LanceDB's native full-text index, or both fused with the exact-terms list
(hybrid, the default; see fusion.py).

The table carries its chunk format in its schema's metadata: a table written by an older
format is dropped and its files ingested again (RetrievalService does that at start).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from retrieval.chunking import Chunk
from retrieval.fusion import DEFAULT_WEIGHTS, FusionWeights, exact_ranking, exact_terms, fuse
from retrieval.s3 import is_object_store

TABLE = "chunks"
# Older versions stay this long after compaction, for searches still reading them.
OLD_VERSIONS_KEPT = timedelta(minutes=1)
# Writes (each a new table version) before compaction is due.
WRITES_PER_COMPACTION = 8
# What a row holds and how it was made; a table of another format is indexed again.
# 2: context (title, headings, page) embedded and indexed with the text.
CHUNK_FORMAT = "2"
# A write that lost a race with another process's commit (shared storage) is tried again.
COMMIT_ATTEMPTS = 6
_FORMAT_KEY = b"hearth_chunk_format"


@dataclass(frozen=True)
class Hit:
    vector_store_id: str
    file_id: str
    filename: str
    chunk_index: int
    text: str
    page: int | None
    char_start: int
    char_end: int
    position: str
    heading: str | None
    attributes: dict[str, Any]
    score: float
    context: str = ""

    @property
    def indexed_text(self) -> str:
        return f"{self.context}\n{self.text}" if self.context else self.text


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _committed(write: Callable[[], object]) -> None:
    """Run a LanceDB write; again, after a short wait, when another process committed a
    conflicting version first (Lance's commits are optimistic)."""
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            write()
            return
        except Exception as e:
            if "onflict" not in str(e) or attempt == COMMIT_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * 2**attempt)


class ChunkStore:
    def __init__(
        self,
        uri: str,
        dim: int,
        storage_options: dict[str, str] | None = None,
        several_processes: bool = False,
    ) -> None:
        """`uri`: a folder, or object storage (`s3://bucket/prefix`, with its endpoint and
        credentials in `storage_options`) that other Hearth processes may write too;
        `several_processes`: a folder other processes of this machine write too."""
        # Imported here, not with the module: a server without an embedding model never
        # needs LanceDB (the largest thing Hearth installs), and pyarrow must not be loaded
        # before llama.cpp's CUDA backend places a model (measured on an H200: importing
        # pyarrow first makes llama_model_load_from_file segfault); the runtime loads the
        # models before it builds the chunk store.
        import lancedb
        import pyarrow as pa

        self.dim = dim
        # On shared storage another process may have written since our last read: every
        # read first looks for a newer table version (one small request to the bucket).
        self.shared = several_processes or is_object_store(uri)
        self._db = lancedb.connect(
            uri,
            storage_options=storage_options,
            read_consistency_interval=timedelta(0) if self.shared else None,
        )
        self._schema = pa.schema(
            [
                pa.field("id", pa.string()),
                pa.field("vector_store_id", pa.string()),
                pa.field("file_id", pa.string()),
                pa.field("filename", pa.string()),
                pa.field("chunk_index", pa.int32()),
                pa.field("text", pa.string()),
                pa.field("page", pa.int32()),
                pa.field("char_start", pa.int32()),
                pa.field("char_end", pa.int32()),
                pa.field("position", pa.string()),
                pa.field("heading", pa.string()),
                pa.field("attributes", pa.string()),
                pa.field("context", pa.string()),
                pa.field("search_text", pa.string()),
                pa.field("vector", pa.list_(pa.float32(), dim)),
            ],
            metadata={_FORMAT_KEY: CHUNK_FORMAT.encode()},
        )
        try:
            self._table = self._db.open_table(TABLE)
        except (ValueError, FileNotFoundError):  # LanceDB's "table not found"
            self._table = self._db.create_table(TABLE, schema=self._schema, exist_ok=True)
        metadata = self._table.schema.metadata or {}
        # Older than this format (or made by another embedding model's width): index again.
        self.format_outdated = (
            metadata.get(_FORMAT_KEY) != CHUNK_FORMAT.encode()
            or self._table.schema.field("vector").type != self._schema.field("vector").type
        )
        self._lock = threading.Lock()  # one writer at a time; LanceDB commits are versions
        self._fts_stale = True
        self._writes = 0  # since the last compaction

    def upsert(
        self,
        vector_store_id: str,
        file_id: str,
        filename: str,
        chunks: Sequence[Chunk],
        vectors: np.ndarray,
        attributes: dict[str, Any],
    ) -> None:
        rows = chunk_rows(vector_store_id, file_id, filename, chunks, vectors, attributes)
        import pyarrow as pa

        with self._lock:
            if rows:
                data = pa.Table.from_pylist(rows, schema=self._schema)
                _committed(
                    lambda: (
                        self._table.merge_insert("id")
                        .when_matched_update_all()
                        .when_not_matched_insert_all()
                        .execute(data)
                    )
                )
            # A shorter re-ingestion leaves no stale tail behind.
            _committed(
                lambda: self._table.delete(
                    f"vector_store_id = {_quote(vector_store_id)} AND "
                    f"file_id = {_quote(file_id)} AND chunk_index >= {len(rows)}"
                )
            )
            self._fts_stale = True
            self._writes += 1

    def recreate(self) -> None:
        """Drop every row and start an empty table of the current format."""
        with self._lock:
            self._db.drop_table(TABLE)
            self._table = self._db.create_table(TABLE, schema=self._schema)
            self.format_outdated = False
            self._fts_stale = True
            self._writes = 0

    def delete(self, vector_store_id: str, file_id: str | None = None) -> None:
        where = f"vector_store_id = {_quote(vector_store_id)}"
        if file_id is not None:
            where += f" AND file_id = {_quote(file_id)}"
        with self._lock:
            _committed(lambda: self._table.delete(where))
            self._fts_stale = True
            self._writes += 1

    def count(self, vector_store_id: str, file_id: str | None = None) -> int:
        where = f"vector_store_id = {_quote(vector_store_id)}"
        if file_id is not None:
            where += f" AND file_id = {_quote(file_id)}"
        return self._table.count_rows(where)

    def texts(self, vector_store_id: str, file_id: str) -> list[str]:
        """A file's chunks in this store, in document order (the text shown and cited)."""
        where = f"vector_store_id = {_quote(vector_store_id)} AND file_id = {_quote(file_id)}"
        n = self._table.count_rows(where)
        if n == 0:
            return []
        rows = self._table.search().where(where).select(["chunk_index", "text"]).limit(n)
        table = rows.to_arrow()
        pairs = zip(table["chunk_index"].to_pylist(), table["text"].to_pylist(), strict=True)
        return [text for _, text in sorted(pairs)]

    def pairs(self) -> set[tuple[str, str]]:
        """Every (vector store, file) that has chunks here."""
        n = self._table.count_rows()
        if n == 0:
            return set()
        rows = self._table.search().select(["vector_store_id", "file_id"]).limit(n).to_arrow()
        return set(
            zip(rows["vector_store_id"].to_pylist(), rows["file_id"].to_pylist(), strict=True)
        )

    @property
    def compaction_due(self) -> bool:
        return self._writes >= WRITES_PER_COMPACTION

    def compact(self, keep: timedelta = OLD_VERSIONS_KEPT) -> None:
        """Merge small fragments and drop table versions older than `keep`: every write
        is a new LanceDB version, and without this the directory only grows."""
        with self._lock:
            _committed(lambda: self._table.optimize(cleanup_older_than=keep))
            self._writes = 0

    def _ensure_fts(self) -> None:
        with self._lock:
            if self._fts_stale:
                _committed(
                    lambda: self._table.create_fts_index(
                        "search_text", use_tantivy=False, replace=True
                    )
                )
                self._fts_stale = False

    def search(
        self,
        vector_store_ids: Sequence[str],
        query: str,
        vector: np.ndarray | None,
        k: int,
        mode: str = "hybrid",
        where: str | None = None,
        weights: FusionWeights = DEFAULT_WEIGHTS,
    ) -> list[Hit]:
        ranked = self.ranked_lists(vector_store_ids, query, vector, max(k * 4, 40), mode, where)
        return ranked_hits(ranked, mode, k, weights)

    def ranked_lists(
        self,
        vector_store_ids: Sequence[str],
        query: str,
        vector: np.ndarray | None,
        depth: int,
        mode: str = "hybrid",
        where: str | None = None,
    ) -> dict[str, list[dict[str, Any]]]:
        """The rows each first-stage list ranks, best first, `depth` deep: vector, text, and
        (hybrid) exact, the candidates of both that spell the query's exact terms."""
        stores = " OR ".join(f"vector_store_id = {_quote(v)}" for v in vector_store_ids)
        condition = f"({stores})" + (f" AND ({where})" if where else "")
        ranked: dict[str, list[dict[str, Any]]] = {}
        if mode in ("vector", "hybrid") and vector is not None:
            ranked["vector"] = (
                self._table.search(vector.astype(np.float32), vector_column_name="vector")
                .distance_type("cosine")
                .where(condition, prefilter=True)
                .limit(depth)
                .to_list()
            )
        if mode in ("text", "hybrid") and query.strip():
            self._ensure_fts()
            ranked["text"] = (
                self._table.search(query, query_type="fts")
                .where(condition, prefilter=True)
                .limit(depth)
                .to_list()
            )
        if mode == "hybrid":
            add_exact(ranked, query)
        return ranked


def add_exact(ranked: dict[str, list[dict[str, Any]]], query: str) -> None:
    """Hybrid's third list: the candidates of the others that spell the query's exact
    terms (codes, identifiers, numbers)."""
    rows = {row["id"]: row for rows in ranked.values() for row in rows}
    order = _interleave([[r["id"] for r in rows_] for rows_ in ranked.values()])
    exact = exact_ranking(order, lambda i: rows[i]["search_text"], exact_terms(query))
    ranked["exact"] = [rows[i] for i in exact]


def ranked_hits(
    ranked: dict[str, list[dict[str, Any]]], mode: str, k: int, weights: FusionWeights
) -> list[Hit]:
    """The k best of a backend's ranked lists: one list's own order and score (vector:
    cosine similarity, text: the full-text score), or hybrid's fusion of all of them."""
    rows = {row["id"]: row for rows in ranked.values() for row in rows}
    if mode == "vector":
        scored = [(r["id"], 1.0 - float(r.get("_distance", 1.0))) for r in ranked["vector"]]
    elif mode == "text":
        scored = [(r["id"], float(r.get("_score", 0.0))) for r in ranked["text"]]
    else:
        ids = {name: [r["id"] for r in rows_] for name, rows_ in ranked.items()}
        scored = fuse(ids, weights)
    return [_hit(rows[i], score) for i, score in scored[:k]]


# The columns of a chunk row besides its vector, in the order every backend stores them.
CHUNK_COLUMNS = (
    "id",
    "vector_store_id",
    "file_id",
    "filename",
    "chunk_index",
    "text",
    "page",
    "char_start",
    "char_end",
    "position",
    "heading",
    "attributes",
    "context",
    "search_text",
)


def chunk_rows(
    vector_store_id: str,
    file_id: str,
    filename: str,
    chunks: Sequence[Chunk],
    vectors: np.ndarray,
    attributes: dict[str, Any],
) -> list[dict[str, Any]]:
    """A file's chunks as the rows every backend stores, keyed store/file/index."""
    return [
        {
            "id": f"{vector_store_id}/{file_id}/{c.index}",
            "vector_store_id": vector_store_id,
            "file_id": file_id,
            "filename": filename,
            "chunk_index": c.index,
            "text": c.text,
            "page": c.page,
            "char_start": c.char_start,
            "char_end": c.char_end,
            "position": c.position,
            "heading": c.heading,
            "attributes": json.dumps(attributes),
            "context": c.context,
            "search_text": c.indexed_text,
            "vector": v.astype(np.float32),
        }
        for c, v in zip(chunks, vectors, strict=True)
    ]


def _interleave(lists: list[list[str]]) -> list[str]:
    """Ids of several ranked lists, rank by rank, each once."""
    seen: dict[str, None] = {}
    for rank in range(max((len(x) for x in lists), default=0)):
        for ids in lists:
            if rank < len(ids):
                seen.setdefault(ids[rank])
    return list(seen)


def _hit(row: dict[str, Any], score: float) -> Hit:
    return Hit(
        vector_store_id=row["vector_store_id"],
        file_id=row["file_id"],
        filename=row["filename"],
        chunk_index=row["chunk_index"],
        text=row["text"],
        page=row["page"],
        char_start=row["char_start"],
        char_end=row["char_end"],
        position=row["position"],
        heading=row["heading"],
        attributes=json.loads(row["attributes"] or "{}"),
        score=score,
        context=row.get("context") or "",
    )
