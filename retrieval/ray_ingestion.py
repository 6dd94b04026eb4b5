"""Ingestion as a Ray Data pipeline (issue 20): `hearth ingest --ray [ADDRESS] PATH...`.

parse (Ray tasks, each in Hearth's time- and memory-limited parser process) -> chunk and
embed (Ray actors, each holding Hearth's embedder: the same GGUF model, the same batching)
-> write (the driver: the chunk store's idempotent keys, then the catalog). The chunking
and embedding are the in-process worker's own functions (ingestion.chunk_file and
ingestion.embed_all), so both give the same chunks and vectors for the same file.

The driver reads and writes storage directly, not through a server: the uploaded bytes go
to the file store first and workers read them from there, so on a real cluster the storage
must be shared (an s3:// bucket and PostgreSQL, see README); on one machine the data
directory serves. A file becomes visible to search only when its catalog row is written,
after its chunks, so a run cut short leaves nothing half-indexed in sight (and re-running
it writes the same keys).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.catalog import COMPLETED, FAILED
from retrieval.ingestion import ChunkingOptions, chunk_file, embed_all
from retrieval.parse_process import ParserProcess
from retrieval.parsing import ParseError
from retrieval.storage import Storage


@dataclass(frozen=True)
class EmbedderSpec:
    """What a Ray actor needs to build Hearth's embedder where it runs."""

    path: str
    n_ctx: int
    n_seq_max: int
    threads: int
    n_gpu_layers: int = 0


def _parse(row: dict[str, Any], storage: Storage, timeout: float) -> dict[str, Any]:
    parser = ParserProcess(timeout)
    try:
        with storage.blobs().readable(row["file_id"]) as path:
            sections = parser.parse(path, row["filename"])
        return {**row, "sections": pickle.dumps(sections), "error": ""}
    except ParseError as e:
        return {**row, "sections": b"", "error": str(e)}
    finally:
        parser.close()


class ChunkAndEmbed:
    """A Ray actor: one embedder for its lifetime, files through it one batch at a time."""

    def __init__(self, spec: EmbedderSpec, options: ChunkingOptions) -> None:
        from server.engine.embedder import Embedder

        self.embedder = Embedder.from_file(
            Path(spec.path), spec.n_ctx, spec.n_seq_max, spec.threads, spec.n_gpu_layers
        )
        self.embedder.start()
        self.options = options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"file_id": [], "filename": [], "chunks": [], "vectors": []}
        out["error"] = []
        for i in range(len(batch["file_id"])):
            error = str(batch["error"][i])
            chunks: list[Any] = []
            vectors = np.empty((0, self.embedder.dim), dtype=np.float32)
            if not error:
                sections = pickle.loads(batch["sections"][i])
                chunks, inputs = chunk_file(
                    sections, str(batch["filename"][i]), self.embedder, self.options
                )
                vectors = embed_all(self.embedder, inputs)
            out["file_id"].append(str(batch["file_id"][i]))
            out["filename"].append(str(batch["filename"][i]))
            out["chunks"].append(pickle.dumps(chunks))
            out["vectors"].append(vectors.astype(np.float32).tobytes())
            out["error"].append(error)
        return out


def _start_ray(address: str, workers: int) -> None:
    import ray

    if ray.is_initialized():
        return
    if address in ("", "local"):
        # A cluster of this machine alone: enough CPU slots for the actors and a parse task.
        ray.init(
            num_cpus=max(os.cpu_count() or 1, workers + 1),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)


def run_pipeline(
    storage: Storage,
    files: list[dict[str, str]],
    spec: EmbedderSpec,
    options: ChunkingOptions,
    address: str,
    workers: int,
    parse_timeout: float,
    progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """Rows {file_id, filename, chunks, vectors, error} as the pipeline finishes them."""
    import ray

    _start_ray(address, workers)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    ds = ray.data.from_items(files, override_num_blocks=max(1, len(files)))
    ds = ds.map(_parse, fn_kwargs={"storage": storage, "timeout": parse_timeout}, num_cpus=0.5)
    ds = ds.map_batches(
        ChunkAndEmbed,
        fn_constructor_kwargs={"spec": spec, "options": options},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
    )
    yield from ds.iter_rows()


def ingest(
    storage: Storage,
    paths: list[Path],
    store: str,
    spec: EmbedderSpec,
    options: ChunkingOptions,
    address: str = "local",
    workers: int = 1,
    parse_timeout: float = 120.0,
    max_upload_bytes: int = 64 << 20,
    quiet: bool = False,
) -> list[dict[str, Any]]:
    """Upload, then index through Ray; one result per file: {filename, status, chunks,
    error}."""
    from tqdm import tqdm

    from server.engine.embedder import embedding_width

    # Ray first: its processes are forked, and LanceDB's runtime must not be running yet.
    _start_ray(address, workers)
    files = storage.files(max_upload_bytes)
    catalog = storage.catalog()
    dim = embedding_width(Path(spec.path))
    chunks_store = storage.chunks(dim)
    try:
        store_id = _store_id(catalog, store)
        uploaded = []
        for path in paths:
            with path.open("rb") as f:
                stored = files.add(f, path.name, "assistants")
            uploaded.append({"file_id": stored.id, "filename": stored.filename})
        results = []
        rows = run_pipeline(
            storage, uploaded, spec, options, address, workers, parse_timeout, not quiet
        )
        for row in tqdm(rows, total=len(uploaded), desc="index", unit="file", disable=quiet):
            chunks = pickle.loads(row["chunks"])
            vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(-1, dim)
            if not row["error"]:
                chunks_store.upsert(store_id, row["file_id"], row["filename"], chunks, vectors, {})
            error = f"{row['filename']}: {row['error']}" if row["error"] else None
            catalog.record_ingested(store_id, row["file_id"], {}, len(chunks), error)
            results.append(
                {
                    "filename": row["filename"],
                    "file_id": row["file_id"],
                    "status": FAILED if row["error"] else COMPLETED,
                    "chunks": len(chunks),
                    "error": row["error"],
                }
            )
        return results
    finally:
        files.close()
        catalog.close()


class RayIndexer:
    """The server's worker handing the parse, chunk and embed of its queued jobs to the
    same Ray Data pipeline (`retrieval.ray_address`): one pipeline for the files queued
    together, the worker keeping the jobs' bookkeeping and writes
    (ingestion.RemoteIndexer)."""

    def __init__(
        self,
        storage: Storage,
        spec: EmbedderSpec,
        options: ChunkingOptions,
        address: str,
        dim: int,
        workers: int = 1,
        parse_timeout: float = 120.0,
    ) -> None:
        self.storage, self.spec, self.options = storage, spec, options
        self.address, self.dim, self.workers = address, dim, workers
        self.parse_timeout = parse_timeout
        self._started = False

    def index_many(
        self, files: list[tuple[str, str]], options: ChunkingOptions
    ) -> dict[str, tuple[list[Any], np.ndarray] | str]:
        """Each (file id, filename)'s chunks and vectors, or why it cannot be read."""
        rows = run_pipeline(
            self.storage,
            [{"file_id": file_id, "filename": filename} for file_id, filename in files],
            self.spec,
            options,
            self.address,
            self.workers,
            self.parse_timeout,
            progress=False,
        )
        self._started = True  # from here on Ray may be running in this process
        out: dict[str, tuple[list[Any], np.ndarray] | str] = {}
        for row in list(rows):  # the whole pipeline run, not left half-consumed
            if row["error"]:
                out[row["file_id"]] = str(row["error"])
                continue
            vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(-1, self.dim)
            out[row["file_id"]] = (pickle.loads(row["chunks"]), vectors)
        return out

    def close(self) -> None:
        """Stop the Ray cluster this process started (a local one; from a cluster's
        address, only this driver's connection): a server stopped by a signal does not
        run Ray's exit hook, and its agents would outlive it."""
        if self._started:
            import ray

            ray.shutdown()


def _store_id(catalog: Any, store: str) -> str:
    """The store named (or with the id) `store`, made if there is none."""
    for s in catalog.list_stores():
        if store in (s.id, s.name):
            return str(s.id)
    return str(catalog.create_store(store, {}).id)
