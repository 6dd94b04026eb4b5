"""Chunks in PostgreSQL with pgvector (issue 20): the second chunk backend, for teams that
keep their data in PostgreSQL. The same interface and rows as chunk_store.ChunkStore
(LanceDB); vectors in a `vector(dim)` column with an HNSW index (cosine), full text in a
generated `tsvector` column with a GIN index, and the same hybrid fusion (fusion.py) over
the two lists and the exact-terms list.

Full text: PostgreSQL's `english` configuration (lower case, stop words, stemming, as
LanceDB's index is set up), ranked by BM25 computed in SQL, since PostgreSQL's own
`ts_rank_cd` has no inverse document frequency (measured on the Debian manuals: text MRR
0.40 with it against LanceDB's 0.70): each query lexeme's document frequency in the
searched stores comes from the GIN index, term frequencies from the tsvector's positions,
document length is its number of distinct lexemes. Candidates are the rows holding the
query's rarer lexemes (rarest first, up to a budget of postings), so a query of common
words does not score the whole table; a row with none of the rare words would rank low
anyway.

Writes are transactions, so concurrent writers from several processes need no retries;
deletes of a file's chunks and its new rows commit together.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from retrieval.chunk_store import (
    CHUNK_COLUMNS,
    CHUNK_FORMAT,
    Hit,
    add_exact,
    chunk_rows,
    ranked_hits,
)
from retrieval.chunking import Chunk
from retrieval.fusion import DEFAULT_WEIGHTS, FusionWeights

TABLE = "hearth_chunks"
# chunk_rows()'s keys; `embedding` is the vector.
_COLUMNS = CHUNK_COLUMNS
_SELECT = ", ".join(_COLUMNS)
# HNSW's candidate list at query time: pgvector's default (40) returns fewer than the
# depth hybrid search asks for once a store filter drops rows; iterative scans fill it.
_EF_SEARCH = 100
# BM25's usual constants, and how many postings (rows per lexeme, summed) the rarest
# query lexemes may bring in as candidates.
_K1, _B = 1.2, 0.75
_BM25_CANDIDATE_POSTINGS = 5000


def _schema(dim: int) -> list[str]:
    return [
        "CREATE EXTENSION IF NOT EXISTS vector",
        "CREATE TABLE IF NOT EXISTS hearth_chunk_meta (key TEXT PRIMARY KEY, value TEXT)",
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
            id TEXT PRIMARY KEY,
            vector_store_id TEXT NOT NULL,
            file_id TEXT NOT NULL,
            filename TEXT NOT NULL,
            chunk_index INTEGER NOT NULL,
            text TEXT NOT NULL,
            page INTEGER,
            char_start INTEGER NOT NULL,
            char_end INTEGER NOT NULL,
            position TEXT NOT NULL,
            heading TEXT,
            attributes TEXT NOT NULL,
            context TEXT NOT NULL,
            search_text TEXT NOT NULL,
            embedding vector({dim}) NOT NULL,
            tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', search_text)) STORED
        )""",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_file ON {TABLE} (vector_store_id, file_id)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_tsv ON {TABLE} USING gin (tsv)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_hnsw ON {TABLE} "
        "USING hnsw (embedding vector_cosine_ops)",
    ]


def _vector(v: np.ndarray) -> str:
    """pgvector's text form, '[x,y,...]' (no client-side type adapter needed)."""
    return "[" + ",".join(f"{x:.7g}" for x in v.astype(np.float32).tolist()) + "]"


class PgChunkStore:
    shared = True
    compaction_due = False  # PostgreSQL's autovacuum does what LanceDB's compaction does

    def __init__(self, url: str, dim: int) -> None:
        import psycopg

        self.dim = dim
        self.url = url
        self._connect = lambda: psycopg.connect(url, autocommit=True)
        self._conn = self._connect()
        self._lock = threading.Lock()
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(7201121)")  # schema races
            stored = self._meta()
            # Older than this format, or another embedding model's width: index again.
            self.format_outdated = stored is not None and stored != self._format
            if not self.format_outdated:
                for statement in _schema(dim):
                    self._conn.execute(statement)
                self._set_meta()

    @property
    def _format(self) -> str:
        return f"{CHUNK_FORMAT}/{self.dim}"

    def _meta(self) -> str | None:
        exists = self._conn.execute("SELECT to_regclass('hearth_chunk_meta')").fetchone()[0]
        if exists is None:
            return None
        row = self._conn.execute(
            "SELECT value FROM hearth_chunk_meta WHERE key = 'format'"
        ).fetchone()
        return row[0] if row else None

    def _set_meta(self) -> None:
        self._conn.execute(
            "INSERT INTO hearth_chunk_meta VALUES ('format', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (self._format,),
        )

    def _db(self) -> Any:
        if self._conn.closed or self._conn.broken:
            self._conn = self._connect()
        return self._conn

    def recreate(self) -> None:
        with self._lock:
            conn = self._db()
            with conn.transaction():
                conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
                for statement in _schema(self.dim):
                    conn.execute(statement)
                self._set_meta()
            self.format_outdated = False

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
        placeholders = ", ".join(["%s"] * (len(_COLUMNS) + 1))
        updates = ", ".join(f"{c} = excluded.{c}" for c in (*_COLUMNS[1:], "embedding"))
        with self._lock:
            conn = self._db()
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO {TABLE} ({_SELECT}, embedding) VALUES ({placeholders}) "
                    f"ON CONFLICT (id) DO UPDATE SET {updates}",
                    [(*(r[c] for c in _COLUMNS), _vector(r["vector"])) for r in rows],
                )
                # A shorter re-ingestion leaves no stale tail behind.
                cursor.execute(
                    f"DELETE FROM {TABLE} WHERE vector_store_id = %s AND file_id = %s "
                    "AND chunk_index >= %s",
                    (vector_store_id, file_id, len(rows)),
                )

    def delete(self, vector_store_id: str, file_id: str | None = None) -> None:
        where, args = "vector_store_id = %s", [vector_store_id]
        if file_id is not None:
            where, args = where + " AND file_id = %s", [*args, file_id]
        with self._lock:
            self._db().execute(f"DELETE FROM {TABLE} WHERE {where}", args)

    def count(self, vector_store_id: str, file_id: str | None = None) -> int:
        where, args = "vector_store_id = %s", [vector_store_id]
        if file_id is not None:
            where, args = where + " AND file_id = %s", [*args, file_id]
        with self._lock:
            return int(
                self._db()
                .execute(f"SELECT COUNT(*) FROM {TABLE} WHERE {where}", args)
                .fetchone()[0]
            )

    def texts(self, vector_store_id: str, file_id: str) -> list[str]:
        with self._lock:
            rows = (
                self._db()
                .execute(
                    f"SELECT text FROM {TABLE} WHERE vector_store_id = %s AND file_id = %s "
                    "ORDER BY chunk_index",
                    [vector_store_id, file_id],
                )
                .fetchall()
            )
        return [r[0] for r in rows]

    def pairs(self) -> set[tuple[str, str]]:
        with self._lock:
            rows = (
                self._db()
                .execute(f"SELECT DISTINCT vector_store_id, file_id FROM {TABLE}")
                .fetchall()
            )
        return {(r[0], r[1]) for r in rows}

    def compact(self) -> None:
        pass

    def search(
        self,
        vector_store_ids: Sequence[str],
        query: str,
        vector: np.ndarray | None,
        k: int,
        mode: str = "hybrid",
        weights: FusionWeights = DEFAULT_WEIGHTS,
    ) -> list[Hit]:
        ranked = self.ranked_lists(vector_store_ids, query, vector, max(k * 4, 40), mode)
        return ranked_hits(ranked, mode, k, weights)

    def ranked_lists(
        self,
        vector_store_ids: Sequence[str],
        query: str,
        vector: np.ndarray | None,
        depth: int,
        mode: str = "hybrid",
    ) -> dict[str, list[dict[str, Any]]]:
        stores = list(vector_store_ids)
        ranked: dict[str, list[dict[str, Any]]] = {}
        with self._lock:
            conn = self._db()
            with conn.transaction():
                if mode in ("vector", "hybrid") and vector is not None:
                    conn.execute(f"SET LOCAL hnsw.ef_search = {_EF_SEARCH}")
                    conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
                    cursor = conn.execute(
                        f"SELECT {_SELECT}, embedding <=> %s::vector AS _distance FROM {TABLE} "
                        "WHERE vector_store_id = ANY(%s) ORDER BY _distance LIMIT %s",
                        (_vector(vector), stores, depth),
                    )
                    ranked["vector"] = _dicts(cursor)
                if mode in ("text", "hybrid") and query.strip():
                    ranked["text"] = self._bm25(conn, stores, query, depth)
        if mode == "hybrid":
            add_exact(ranked, query)
        return ranked

    def _bm25(self, conn: Any, stores: list[str], query: str, depth: int) -> list[dict[str, Any]]:
        lexemes = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT unnest(tsvector_to_array(to_tsvector('english', %s)))", (query,)
            ).fetchall()
        ]
        if not lexemes:
            return []
        n, avg_length = conn.execute(
            f"SELECT count(*), COALESCE(avg(length(tsv)), 1) FROM {TABLE} "
            "WHERE vector_store_id = ANY(%s)",
            (stores,),
        ).fetchone()
        if n == 0:
            return []
        frequencies = conn.execute(
            f"SELECT l, (SELECT count(*) FROM {TABLE} WHERE vector_store_id = ANY(%s) "
            "AND tsv @@ quote_literal(l)::tsquery) FROM unnest(%s::text[]) AS l",
            (stores, lexemes),
        ).fetchall()
        present = sorted((df, lexeme) for lexeme, df in frequencies if df > 0)
        if not present:
            return []
        # BM25's idf (Lucene's, never negative).
        idf = {lexeme: math.log(1 + (n - df + 0.5) / (df + 0.5)) for df, lexeme in present}
        chosen, postings = [], 0
        for df, lexeme in present:
            if chosen and postings + df > _BM25_CANDIDATE_POSTINGS:
                break
            chosen.append(lexeme)
            postings += df
        cursor = conn.execute(
            f"""WITH q AS (SELECT * FROM unnest(%s::text[], %s::float8[]) AS q(lexeme, idf)),
            candidates AS (
                SELECT id, tsv, length(tsv) AS dl FROM {TABLE}
                WHERE vector_store_id = ANY(%s) AND tsv @@ %s::tsquery
            ),
            scored AS (
                SELECT c.id, sum(q.idf * (array_length(u.positions, 1) * {_K1 + 1})
                    / (array_length(u.positions, 1) + {_K1} * (1 - {_B} + {_B} * c.dl / %s)))
                    AS _score
                FROM candidates c CROSS JOIN LATERAL unnest(c.tsv) AS u
                JOIN q ON q.lexeme = u.lexeme
                GROUP BY c.id ORDER BY _score DESC, c.id LIMIT %s
            )
            SELECT {", ".join(f"t.{c}" for c in _COLUMNS)}, scored._score
            FROM scored JOIN {TABLE} t USING (id) ORDER BY scored._score DESC, t.id""",
            (
                list(idf),
                list(idf.values()),
                stores,
                " | ".join(_quote_lexeme(x) for x in chosen),
                float(avg_length),
                depth,
            ),
        )
        return _dicts(cursor)

    def close(self) -> None:
        self._conn.close()


def _quote_lexeme(lexeme: str) -> str:
    """A lexeme as a tsquery operand: quoted, quotes and backslashes escaped."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def _dicts(cursor: Any) -> list[dict[str, Any]]:
    names = [d.name for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
