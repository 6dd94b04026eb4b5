"""Everything retrieval holds, wired together: files, vector stores, chunks, the worker."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from retrieval.catalog import Catalog, VectorStoreFile
from retrieval.files import FileStore
from retrieval.filters import matches
from retrieval.ingestion import ChunkingOptions, IngestionWorker
from retrieval.store import ChunkStore, Hit
from server.engine.embedder import Embedder


class Retrieval:
    def __init__(
        self,
        data_dir: Path,
        lancedb_uri: str,
        max_upload_bytes: int,
        embedder: Embedder | None,
        options: ChunkingOptions,
    ) -> None:
        self.files = FileStore(data_dir, max_upload_bytes)
        self.catalog = Catalog(data_dir)
        self.embedder = embedder
        self.store: ChunkStore | None = None
        self.worker: IngestionWorker | None = None
        if embedder is not None:
            self.store = ChunkStore(lancedb_uri or str(data_dir / "lancedb"), embedder.dim)
            self.worker = IngestionWorker(self.catalog, self.files, self.store, embedder, options)
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.worker is not None

    def start(self) -> None:
        if self.worker is not None:
            self._task = asyncio.get_running_loop().create_task(self.worker.run())
            self.worker.wake()  # resume whatever a crash left in_progress

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.files.close()
        self.catalog.close()

    def attach(self, store_id: str, file_id: str, attributes: dict[str, Any]) -> VectorStoreFile:
        vsf = self.catalog.add_file(store_id, file_id, attributes)
        if self.worker is not None:
            self.worker.wake()
        return vsf

    def detach(self, store_id: str, file_id: str) -> bool:
        removed = self.catalog.remove_file(store_id, file_id)
        if self.store is not None:
            self.store.delete(store_id, file_id)
        return removed

    def delete_store(self, store_id: str) -> bool:
        deleted = self.catalog.delete_store(store_id)
        if self.store is not None:
            self.store.delete(store_id)
        return deleted

    def delete_file(self, file_id: str) -> bool:
        for store_id in self.catalog.stores_with_file(file_id):
            self.detach(store_id, file_id)
        return self.files.delete(file_id)

    async def search(
        self, store_ids: list[str], query: str, k: int, mode: str, filters: dict[str, Any] | None
    ) -> list[Hit]:
        assert self.store is not None and self.embedder is not None
        vector = None
        if mode in ("vector", "hybrid"):
            tokens = self.embedder.model.tokenize(query, add_special=True)
            tokens = tokens[: self.embedder.max_tokens]
            vector = (await asyncio.wrap_future(self.embedder.submit([tokens])))[0]
        # Attribute filters are applied to a deeper candidate list, then cut to k.
        depth = k if filters is None else max(k * 5, 50)
        hits = await asyncio.to_thread(self.store.search, store_ids, query, vector, depth, mode)
        if filters is not None:
            hits = [h for h in hits if matches(filters, h.attributes)]
        for store_id in store_ids:
            self.catalog.touch(store_id)
        return hits[:k]
