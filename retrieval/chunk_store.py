"""Chunks of every vector store in one LanceDB table: vectors, text and where they came from.

Rows are keyed by (vector store, file, chunk index), written with merge_insert, so running
an ingestion job again never duplicates a row. Search is by vector, by LanceDB's native
full-text index, or both fused with reciprocal rank fusion (hybrid, the default).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa

from retrieval.chunking import Chunk

TABLE = "chunks"
# Older versions stay this long after compaction, for searches still reading them.
OLD_VERSIONS_KEPT = timedelta(minutes=1)
# Writes (each a new table version) before compaction is due.
WRITES_PER_COMPACTION = 8
# Reciprocal rank fusion constant (Cormack et al.): score = sum 1 / (k + rank).
RRF_K = 60


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


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class ChunkStore:
    def __init__(self, uri: str, dim: int) -> None:
        self.dim = dim
        self._db = lancedb.connect(uri)
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
                pa.field("vector", pa.list_(pa.float32(), dim)),
            ]
        )
        self._table = self._db.create_table(TABLE, schema=self._schema, exist_ok=True)
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
        rows = [
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
                "vector": v.astype(np.float32),
            }
            for c, v in zip(chunks, vectors, strict=True)
        ]
        with self._lock:
            if rows:
                data = pa.Table.from_pylist(rows, schema=self._schema)
                (
                    self._table.merge_insert("id")
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .execute(data)
                )
            # A shorter re-ingestion leaves no stale tail behind.
            self._table.delete(
                f"vector_store_id = {_quote(vector_store_id)} AND file_id = {_quote(file_id)} "
                f"AND chunk_index >= {len(rows)}"
            )
            self._fts_stale = True
            self._writes += 1

    def delete(self, vector_store_id: str, file_id: str | None = None) -> None:
        where = f"vector_store_id = {_quote(vector_store_id)}"
        if file_id is not None:
            where += f" AND file_id = {_quote(file_id)}"
        with self._lock:
            self._table.delete(where)
            self._fts_stale = True
            self._writes += 1

    def count(self, vector_store_id: str, file_id: str | None = None) -> int:
        where = f"vector_store_id = {_quote(vector_store_id)}"
        if file_id is not None:
            where += f" AND file_id = {_quote(file_id)}"
        return self._table.count_rows(where)

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
            self._table.optimize(cleanup_older_than=keep)
            self._writes = 0

    def _ensure_fts(self) -> None:
        with self._lock:
            if self._fts_stale:
                self._table.create_fts_index("text", use_tantivy=False, replace=True)
                self._fts_stale = False

    def search(
        self,
        vector_store_ids: Sequence[str],
        query: str,
        vector: np.ndarray | None,
        k: int,
        mode: str = "hybrid",
        where: str | None = None,
    ) -> list[Hit]:
        stores = " OR ".join(f"vector_store_id = {_quote(v)}" for v in vector_store_ids)
        condition = f"({stores})" + (f" AND ({where})" if where else "")
        depth = max(k * 4, 20)  # candidates per list before fusion
        ranked: list[list[dict[str, Any]]] = []
        if mode in ("vector", "hybrid") and vector is not None:
            ranked.append(
                self._table.search(vector.astype(np.float32), vector_column_name="vector")
                .distance_type("cosine")
                .where(condition, prefilter=True)
                .limit(depth)
                .to_list()
            )
        if mode in ("text", "hybrid") and query.strip():
            self._ensure_fts()
            ranked.append(
                self._table.search(query, query_type="fts")
                .where(condition, prefilter=True)
                .limit(depth)
                .to_list()
            )
        return self._fuse(ranked, k, mode)

    @staticmethod
    def _fuse(ranked: list[list[dict[str, Any]]], k: int, mode: str) -> list[Hit]:
        scores: dict[str, float] = {}
        rows: dict[str, dict[str, Any]] = {}
        for results in ranked:
            for rank, row in enumerate(results):
                rows.setdefault(row["id"], row)
                if mode == "vector":
                    scores[row["id"]] = 1.0 - float(row.get("_distance", 1.0))
                elif mode == "text":
                    scores[row["id"]] = float(row.get("_score", 0.0))
                else:
                    scores[row["id"]] = scores.get(row["id"], 0.0) + 1.0 / (RRF_K + rank + 1)
        best = sorted(scores, key=lambda i: scores[i], reverse=True)[:k]
        return [
            Hit(
                vector_store_id=rows[i]["vector_store_id"],
                file_id=rows[i]["file_id"],
                filename=rows[i]["filename"],
                chunk_index=rows[i]["chunk_index"],
                text=rows[i]["text"],
                page=rows[i]["page"],
                char_start=rows[i]["char_start"],
                char_end=rows[i]["char_end"],
                position=rows[i]["position"],
                heading=rows[i]["heading"],
                attributes=json.loads(rows[i]["attributes"] or "{}"),
                score=scores[i],
            )
            for i in best
        ]
