"""The ingestion worker: parse, chunk, embed and write each queued vector-store file.

It runs as an asyncio task beside the server; the heavy parts (parsing, LanceDB writes)
run in threads and embedding goes through the shared embedder, so chat and search keep
being served. Jobs are the catalog's in_progress rows: on start-up the worker resumes
whatever a crash left unfinished, and merge_insert makes a re-run write each chunk once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from retrieval.catalog import Catalog, VectorStoreFile
from retrieval.chunking import chunk_sections
from retrieval.files import FileStore
from retrieval.parsing import ParseError, parse
from retrieval.store import ChunkStore
from server.engine.embedder import Embedder, EmbedderBusy

logger = logging.getLogger("hearth.ingestion")

# Inputs per embedding request: enough to fill the embedder's batches, few enough that
# chat-side embedding requests are not stuck behind one huge document.
EMBED_GROUP = 64
BUSY_RETRY_SECONDS = 0.5


@dataclass(frozen=True)
class ChunkingOptions:
    max_tokens: int = 256
    overlap_tokens: int = 32


class IngestionWorker:
    def __init__(
        self,
        catalog: Catalog,
        files: FileStore,
        store: ChunkStore,
        embedder: Embedder,
        options: ChunkingOptions,
    ) -> None:
        self.catalog = catalog
        self.files = files
        self.store = store
        self.embedder = embedder
        self.options = options
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.jobs_done = 0

    def wake(self) -> None:
        """Tell the worker a job is queued; callable from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            job = self.catalog.next_job()
            if job is None:
                await self._wake.wait()
                self._wake.clear()
                continue
            await self._process(job)
            self.jobs_done += 1

    def count_tokens(self, text: str) -> int:
        return len(self.embedder.model.tokenize(text, add_special=False))

    async def _embed(self, inputs: list[list[int]]) -> np.ndarray:
        """Vectors for the inputs; while API requests fill the embedder's queue, wait."""
        while True:
            try:
                return await asyncio.wrap_future(self.embedder.submit(inputs))
            except EmbedderBusy:
                await asyncio.sleep(BUSY_RETRY_SECONDS)

    async def _process(self, job: VectorStoreFile) -> None:
        stored = self.files.get(job.file_id)
        if stored is None:
            self.catalog.finish_job(job, 0, "the file was deleted", "file_not_found")
            return
        try:
            sections = await asyncio.to_thread(parse, self.files.path(job.file_id), stored.filename)
            chunks = await asyncio.to_thread(
                chunk_sections,
                sections,
                self.count_tokens,
                self.options.max_tokens,
                self.options.overlap_tokens,
            )
            model = self.embedder.model
            inputs = [
                model.tokenize(c.text, add_special=True)[: self.embedder.max_tokens] for c in chunks
            ]
            parts = [
                await self._embed(inputs[i : i + EMBED_GROUP])
                for i in range(0, len(inputs), EMBED_GROUP)
            ]
            vectors = np.concatenate(parts) if parts else np.empty((0, self.embedder.dim))
            await asyncio.to_thread(
                self.store.upsert,
                job.vector_store_id,
                job.file_id,
                stored.filename,
                chunks,
                vectors,
                job.attributes,
            )
        except ParseError as e:
            logger.info("could not ingest %s: %s", stored.filename, e)
            self.catalog.finish_job(job, 0, f"{stored.filename}: {e}", "invalid_file")
            return
        except Exception as e:
            logger.exception("ingesting %s failed", stored.filename)
            self.catalog.finish_job(job, 0, f"{type(e).__name__}: {e}", "server_error")
            return
        self.catalog.finish_job(job, len(chunks))
        self.catalog.touch(job.vector_store_id)
        logger.info(
            "ingested %s into %s: %d chunks", stored.filename, job.vector_store_id, len(chunks)
        )
