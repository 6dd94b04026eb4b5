"""The ingestion worker: parse, chunk, embed and write each queued vector-store file.

It runs as an asyncio task beside the server. Parsing runs in a child process with a time
limit (parse_process.py); chunking and LanceDB writes in threads; embedding through the
shared embedder, so chat and search keep being served. Jobs are the catalog's in_progress
rows: on start-up the worker resumes whatever a crash left unfinished, and merge_insert
makes a re-run write each chunk once.

What a job writes counts only while it is current (catalog.is_current: the same attach,
by its sequence number): a file detached, deleted or attached again while it was being
ingested gets nothing written, or has what was written removed again. A job that the
server did not survive `max_attempts` times is given up with a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from retrieval.catalog import Catalog, VectorStoreFile
from retrieval.chunk_store import ChunkStore
from retrieval.chunking import Chunk, chunk_sections
from retrieval.embeddings import Embeddings
from retrieval.files import FileStore, StoredFile
from retrieval.parse_process import ParserProcess
from retrieval.parsing import ParseError, Section
from retrieval.pg_chunk_store import PgChunkStore
from server.engine.embedder import EmbedderBusy

logger = logging.getLogger("hearth.ingestion")

# Inputs per embedding request: enough to fill the embedder's batches, few enough that
# chat-side embedding requests are not stuck behind one huge document.
EMBED_GROUP = 64
# Queued jobs handed to Ray together (one Ray Data pipeline).
REMOTE_BATCH = 32
BUSY_RETRY_SECONDS = 0.5
# While idle, how often to see whether the table is due for compaction (deletes from the
# API write versions too).
IDLE_CHECK_SECONDS = 60.0
SHARED_IDLE_CHECK_SECONDS = 5.0
# How long stop() waits for work already running in threads.
STOP_WAIT_SECONDS = 30.0

T = TypeVar("T")


@dataclass(frozen=True)
class ChunkingOptions:
    max_tokens: int = 256
    overlap_tokens: int = 32


def chunk_file(
    sections: list[Section],
    filename: str,
    embedder: Embeddings,
    options: ChunkingOptions,
    count_tokens: Callable[[str], int] | None = None,
) -> tuple[list[Chunk], list[list[int]]]:
    """A parsed file's chunks and the token ids to embed for each (the in-process worker
    and the Ray pipeline both chunk through this, so both index a file the same way)."""
    chunks = chunk_sections(
        sections,
        count_tokens or embedder.count_tokens,
        options.max_tokens,
        options.overlap_tokens,
        filename,
    )
    limit = embedder.max_tokens
    # The context goes first: a long chunk loses its tail to the limit, not its title.
    return chunks, [embedder.tokenize(c.indexed_text)[:limit] for c in chunks]


def embed_all(embedder: Embeddings, inputs: list[list[int]]) -> np.ndarray:
    """Vectors of every input, EMBED_GROUP at a time as the worker sends them (blocking:
    for a Ray actor that owns its embedder)."""
    parts = []
    for i in range(0, len(inputs), EMBED_GROUP):
        while True:
            try:
                parts.append(embedder.submit(inputs[i : i + EMBED_GROUP]).result())
                break
            except EmbedderBusy:
                time.sleep(BUSY_RETRY_SECONDS)
    return np.concatenate(parts) if parts else np.empty((0, embedder.dim), dtype=np.float32)


class RemoteIndexer(Protocol):
    """Parses, chunks and embeds stored files elsewhere (a Ray cluster: ray_ingestion.py's
    RayIndexer); the worker keeps the jobs' bookkeeping and the writes. Blocking."""

    def index_many(
        self, files: list[tuple[str, str]], options: ChunkingOptions
    ) -> dict[str, tuple[list[Chunk], np.ndarray] | str]:
        """For each (file id, filename), in one go: its chunks and vectors, or why it
        cannot be read."""
        ...

    def close(self) -> None:
        """At shutdown, after the last job."""
        ...


class Stopping(Exception):
    """The server is shutting down: the job stops where it is and is resumed next start."""


class IngestionWorker:
    def __init__(
        self,
        catalog: Catalog,
        files: FileStore,
        store: ChunkStore | PgChunkStore,
        embedder: Embeddings,
        options: ChunkingOptions,
        parser: ParserProcess,
        max_attempts: int = 3,
        remote: RemoteIndexer | None = None,
    ) -> None:
        self.catalog = catalog
        self.files = files
        self.store = store
        self.embedder = embedder
        self.options = options
        self.parser = parser
        self.max_attempts = max_attempts
        self.remote = remote
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: set[asyncio.Future[Any]] = set()
        self._stopping = threading.Event()
        self.jobs_done = 0

    def wake(self) -> None:
        """Tell the worker a job is queued; callable from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._thread(self.reconcile)
        # A shared catalog also queues other processes' jobs (and those of a process that
        # died), which nothing here is told about: look more often.
        idle = SHARED_IDLE_CHECK_SECONDS if self.catalog.shared else IDLE_CHECK_SECONDS
        # On Ray, queued jobs go together: one pipeline (its start, its actors loading the
        # model) for many files, not one each.
        batch = REMOTE_BATCH if self.remote is not None else 1
        while True:
            with self.catalog.next_jobs(batch) as jobs:
                if jobs:
                    if self.remote is not None:
                        await self._process_remote(jobs)
                    else:
                        await self._process(jobs[0])
                    self.jobs_done += len(jobs)
                    continue
            if self.store.compaction_due:
                await self._thread(self.store.compact)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), idle)
            self._wake.clear()

    async def stop(self) -> None:
        """After the run task is cancelled: stop the parser and wait for the threads still
        working (a cancelled await does not stop a thread, and none may outlive the
        embedder it calls into)."""
        self._stopping.set()
        self.parser.close()
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=STOP_WAIT_SECONDS)
        if self.remote is not None:
            await asyncio.to_thread(self.remote.close)

    def reconcile(self) -> None:
        """Remove chunks whose file is attached to no store any more: what a crash between
        a detach and its LanceDB delete, or a write that lost its race, left behind."""
        orphans = self.store.pairs() - self.catalog.all_attached()
        for store_id, file_id in orphans:
            self.store.delete(store_id, file_id)
        if orphans:
            logger.info("removed the chunks of %d detached files", len(orphans))

    async def _thread(self, fn: Callable[..., T], *args: Any) -> T:
        future = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        return await future

    def _parse(self, file_id: str, filename: str) -> list[Any]:
        # From a bucket the bytes come down to a temporary file first.
        with self.files.blobs.readable(file_id) as path:
            return self.parser.parse(path, filename)

    def count_tokens(self, text: str) -> int:
        if self._stopping.is_set():
            raise Stopping
        return self.embedder.count_tokens(text)

    def _chunk(
        self, sections: list[Any], filename: str, options: ChunkingOptions
    ) -> tuple[list[Any], list[list[int]]]:
        return chunk_file(sections, filename, self.embedder, options, self.count_tokens)

    async def _embed(self, inputs: list[list[int]]) -> np.ndarray:
        """Vectors for the inputs; while API requests fill the embedder's queue, wait."""
        while True:
            try:
                return await asyncio.wrap_future(self.embedder.submit(inputs))
            except EmbedderBusy:
                await asyncio.sleep(BUSY_RETRY_SECONDS)

    def _begin(self, job: VectorStoreFile) -> tuple[StoredFile, ChunkingOptions] | None:
        """The job's file and chunking, its attempt counted; None when there is nothing
        to do (the file is gone, the job is not current, or it was tried too often)."""
        stored = self.files.get(job.file_id)
        if stored is None:
            self.catalog.finish_job(job, 0, "the file was deleted", "file_not_found")
            return None
        attempt = self.catalog.start_attempt(job)
        if attempt == 0:
            return None  # detached or attached again since it was queued
        if attempt > self.max_attempts:
            self.catalog.finish_job(
                job,
                0,
                f"{stored.filename}: gave up after {self.max_attempts} attempts; the server "
                "stopped while ingesting it each time",
                "ingestion_failed",
            )
            return None
        # The attach's own chunking (OpenAI's chunking_strategy), else the server's.
        return stored, ChunkingOptions(*job.chunking) if job.chunking else self.options

    async def _process(self, job: VectorStoreFile) -> None:
        begun = self._begin(job)
        if begun is None:
            return
        stored, options = begun
        try:
            sections = await self._thread(self._parse, job.file_id, stored.filename)
            chunks, inputs = await self._thread(self._chunk, sections, stored.filename, options)
            parts = [
                await self._embed(inputs[i : i + EMBED_GROUP])
                for i in range(0, len(inputs), EMBED_GROUP)
            ]
            vectors = np.concatenate(parts) if parts else np.empty((0, self.embedder.dim))
        except (Stopping, asyncio.CancelledError):
            self.catalog.undo_attempt(job)  # a shutdown is not the file's fault
            raise
        except Exception as e:
            self._failed(job, stored, e)
            return
        await self._write(job, stored, chunks, vectors)

    async def _process_remote(self, jobs: list[VectorStoreFile]) -> None:
        """Jobs on Ray: one pipeline per chunking among them (a file attached to two stores
        alike is parsed and embedded once)."""
        assert self.remote is not None
        groups: dict[ChunkingOptions, list[tuple[VectorStoreFile, StoredFile]]] = {}
        for job in jobs:
            begun = self._begin(job)
            if begun is not None:
                groups.setdefault(begun[1], []).append((job, begun[0]))
        queue = list(groups.items())
        for i, (options, group) in enumerate(queue):
            files = list({job.file_id: (job.file_id, s.filename) for job, s in group}.values())
            logger.info("indexing %d files on Ray in one pipeline", len(files))
            try:
                results = await self._thread(self.remote.index_many, files, options)
            except (Stopping, asyncio.CancelledError):
                for _, later in queue[i:]:  # a shutdown is not the files' fault
                    for job, _ in later:
                        self.catalog.undo_attempt(job)
                raise
            except Exception as e:
                for job, stored in group:
                    self._failed(job, stored, e)
                continue
            for job, stored in group:
                result = results.get(job.file_id, "it did not come back from the pipeline")
                if isinstance(result, str):
                    self._failed(job, stored, ParseError(result))
                else:
                    await self._write(job, stored, *result)

    def _failed(self, job: VectorStoreFile, stored: StoredFile, error: Exception) -> None:
        if isinstance(error, ParseError):
            logger.info("could not ingest %s: %s", stored.filename, error)
            self.catalog.finish_job(job, 0, f"{stored.filename}: {error}", "invalid_file")
            return
        logger.error("ingesting %s failed: %r", stored.filename, error)
        self.catalog.finish_job(job, 0, f"{type(error).__name__}: {error}", "server_error")

    async def _write(
        self, job: VectorStoreFile, stored: StoredFile, chunks: list[Chunk], vectors: np.ndarray
    ) -> None:
        try:
            if not self.catalog.is_current(job):
                return  # detached or attached again meanwhile: write nothing
            await self._thread(
                self.store.upsert,
                job.vector_store_id,
                job.file_id,
                stored.filename,
                chunks,
                vectors,
                job.attributes,
            )
        except (Stopping, asyncio.CancelledError):
            self.catalog.undo_attempt(job)  # a shutdown is not the file's fault
            raise
        except Exception as e:
            self._failed(job, stored, e)
            return
        if not self.catalog.finish_job(job, len(chunks)):
            # Detached or attached again while we wrote: what we wrote is nobody's (a new
            # attach is queued behind us and writes its own).
            await self._thread(self.store.delete, job.vector_store_id, job.file_id)
            return
        self.catalog.touch(job.vector_store_id)
        logger.info(
            "ingested %s into %s: %d chunks%s",
            stored.filename,
            job.vector_store_id,
            len(chunks),
            " (on Ray)" if self.remote is not None else "",
        )
