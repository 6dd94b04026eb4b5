"""Everything retrieval holds, wired together: files, vector stores, chunks, the worker.

Deleting goes catalog first, chunks second, and search keeps only chunks whose file is
attached to the store in the catalog: a deleted file is never found, even in the moment
between the two steps or after a crash there (the worker removes such leftovers when it
starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import replace
from typing import Any

from retrieval.catalog import FileBatch, VectorStore, VectorStoreFile
from retrieval.chunk_store import ChunkStore, Hit
from retrieval.embeddings import Embeddings
from retrieval.filters import FilterError, matches, validate
from retrieval.ingestion import ChunkingOptions, IngestionWorker, RemoteIndexer
from retrieval.parse_process import ParserProcess
from retrieval.pg_chunk_store import PgChunkStore
from retrieval.reranking import Reranking, rerank
from retrieval.storage import Storage
from retrieval.uploads import UploadStore
from server.errors import FeatureDisabled, InvalidRequest, NotFound

logger = logging.getLogger("hearth.retrieval")
# How often expired files and uploads are looked for.
SWEEP_SECONDS = 60.0


class RetrievalService:
    def __init__(
        self,
        storage: Storage,
        max_upload_bytes: int,
        embedder: Embeddings | None,
        options: ChunkingOptions,
        parse_timeout: float = 120.0,
        max_attempts: int = 3,
        reranker: Reranking | None = None,
        rerank_candidates: int = 20,
        remote: RemoteIndexer | None = None,
    ) -> None:
        """`storage`: the data directory alone, or a bucket and a PostgreSQL database that
        several Hearth processes share (retrieval/storage.py)."""
        self.files = storage.files(max_upload_bytes)
        # Parts wait on this machine's disk (several processes of it may share the folder);
        # the file they become goes wherever files go.
        self.uploads = UploadStore(storage.data_dir / "uploads", self.files)
        self.catalog = storage.catalog()
        self.chunking = options  # what an attach without a chunking strategy of its own gets
        self.embedder = embedder
        self.reranker = reranker
        self.rerank_candidates = rerank_candidates
        self.store: ChunkStore | PgChunkStore | None = None
        self.worker: IngestionWorker | None = None
        if embedder is not None:
            self.store = storage.chunks(embedder.dim)
            if self.store.format_outdated:
                # Queue first, then drop: a crash between the two finds the old table
                # again next start and does both again.
                requeued = self.catalog.requeue_completed()
                self.store.recreate()
                logger.info("chunk format changed: indexing %d files again", requeued)
            self.worker = IngestionWorker(
                self.catalog,
                self.files,
                self.store,
                embedder,
                options,
                ParserProcess(parse_timeout),
                max_attempts,
                remote,
            )
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def enabled(self) -> bool:
        return self.worker is not None

    def require(self) -> None:
        if not self.enabled:
            raise FeatureDisabled(
                "Retrieval needs the embedding model, which is switched off.",
                code="embeddings_disabled",
            )

    def vector_store(self, store_id: str, param: str = "vector_store_id") -> VectorStore:
        """The vector store, or NotFound naming the parameter that named it."""
        store = self.catalog.get_store(store_id)
        if store is None:
            raise NotFound(
                f"No vector store found with id '{store_id}'.",
                param=param,
                code="vector_store_not_found",
            )
        return store

    @staticmethod
    def check_filters(filters: dict[str, Any] | None, param: str) -> None:
        if filters is not None:
            try:
                validate(filters)
            except FilterError as e:
                raise InvalidRequest(f"Invalid filters: {e}.", param=param) from None

    def start(self) -> None:
        """Start the worker (it first resumes whatever a crash left in_progress) and the
        sweep of what expires."""
        loop = asyncio.get_running_loop()
        if self.worker is not None:
            self._tasks.append(loop.create_task(self.worker.run(), name="the ingestion worker"))
        self._tasks.append(loop.create_task(self._sweep_forever(), name="the expiry sweep"))

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.sweep)
            except Exception:  # a failed sweep is tried again at the next one
                logger.exception("sweeping expired files and uploads failed")
            await asyncio.sleep(SWEEP_SECONDS)

    def sweep(self, now: float | None = None) -> int:
        """Delete the files whose expires_after has passed (out of every vector store too)
        and uploads an hour old; how many files. Blocking (LanceDB)."""
        gone = sum(1 for file_id in self.files.expired(now) if self.delete_file(file_id))
        self.uploads.sweep(now)
        return gone

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            # A task that failed already said so (/health); shutdown goes on regardless.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Threads still at work finish before the databases close and the embedder's
        # model is freed.
        if self.worker is not None:
            await self.worker.stop()
        self.files.close()
        self.catalog.close()

    def problems(self) -> list[str]:
        """Background tasks that ended (they are meant to run until shutdown)."""
        out = []
        for task in self._tasks:
            if task.done() and not task.cancelled():
                error = task.exception()
                why = f": {type(error).__name__}: {error}" if error is not None else ""
                out.append(f"{task.get_name()} stopped{why}")
        return out

    def attach(
        self,
        store_id: str,
        file_id: str,
        attributes: dict[str, Any],
        chunking: tuple[int, int] | None = None,
    ) -> VectorStoreFile:
        """Attach a file; it is chunked as `chunking` says (tokens per chunk, overlap) or,
        None, as the server's settings say."""
        vsf = self.catalog.add_file(store_id, file_id, attributes, chunking)
        if self.worker is not None:
            self.worker.wake()
        return vsf

    def detach(self, store_id: str, file_id: str) -> bool:
        """Blocking (LanceDB): from the event loop, run it in a thread."""
        removed = self.catalog.remove_file(store_id, file_id)
        if self.store is not None:
            self.store.delete(store_id, file_id)
        return removed

    def cancel_batch(self, store_id: str, batch_id: str) -> FileBatch | None:
        """Blocking (LanceDB): from the event loop, run it in a thread. A cancelled file
        attached again keeps no chunks of its earlier attach: its status says it has none."""
        cancelled = self.catalog.cancel_batch(store_id, batch_id)
        if cancelled is None:
            return None
        if self.store is not None:
            for file_id in cancelled:
                self.store.delete(store_id, file_id)
        return self.catalog.get_batch(store_id, batch_id)

    def delete_store(self, store_id: str) -> bool:
        """Blocking (LanceDB): from the event loop, run it in a thread."""
        deleted = self.catalog.delete_store(store_id)
        if self.store is not None:
            self.store.delete(store_id)
        return deleted

    def delete_file(self, file_id: str) -> bool:
        """Blocking (LanceDB): from the event loop, run it in a thread."""
        for store_id in self.catalog.stores_with_file(file_id):
            self.detach(store_id, file_id)
        return self.files.delete(file_id)

    async def search(
        self,
        store_ids: list[str],
        query: str,
        k: int,
        mode: str,
        filters: dict[str, Any] | None,
        use_reranker: bool | None = None,
    ) -> list[Hit]:
        """The k best chunks: the first stage (vector, text or hybrid), then, when a
        reranker is loaded and not declined (use_reranker False), its reordering of the
        first stage's best `rerank_candidates` (at least k)."""
        assert self.store is not None and self.embedder is not None
        for store_id in store_ids:
            found = self.catalog.get_store(store_id)
            if found is not None and found.expired():
                raise InvalidRequest(
                    f"The vector store '{store_id}' has expired: it went unused longer than "
                    "its expires_after allows. Set a new expires_after to use it again.",
                    param="vector_store_ids",
                    code="vector_store_expired",
                )
        reranking = self.reranker is not None and use_reranker is not False
        want = max(k, self.rerank_candidates) if reranking else k
        vector = None
        if mode in ("vector", "hybrid"):
            tokens = self.embedder.tokenize(query)[: self.embedder.max_tokens]
            vector = (await asyncio.wrap_future(self.embedder.submit([tokens])))[0]
        # Attribute filters, and chunks of files no longer attached, are dropped from a
        # deeper candidate list, which is then cut.
        depth = 2 * want + 10 if filters is None else max(want * 5, 50)
        hits = await asyncio.to_thread(self.store.search, store_ids, query, vector, depth, mode)
        attached = self.catalog.attached(store_ids)
        # The catalog's attributes are the file's: chunks carry those they were written
        # with, and attributes can be changed after (POST .../files/{file_id}).
        hits = [
            replace(h, attributes=json.loads(attached[key]))
            for h in hits
            if (key := (h.vector_store_id, h.file_id)) in attached
        ]
        if filters is not None:
            hits = [h for h in hits if matches(filters, h.attributes)]
        for store_id in store_ids:
            self.catalog.touch(store_id)
        hits = hits[:want]
        if reranking and self.reranker is not None:
            hits = await rerank(self.reranker, query, hits)
        return hits[:k]
