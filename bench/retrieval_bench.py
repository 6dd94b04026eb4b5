"""Retrieval figures for `make bench`: ingestion throughput and search latency.

- Ingestion: a corpus of multi-page PDFs (written here with fpdf2) through a real server:
  upload, attach, wait until indexed. Its share of the raw embedding throughput is the same
  chunks embedded straight through the embedder, so the gap is the pipeline's overhead
  (parsing, chunking, HTTP, LanceDB writes).
- Search: hybrid search latency over 10k and 100k chunks in a LanceDB table (synthetic
  vectors and text), without HTTP or query embedding.
"""

from __future__ import annotations

import io
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench.embed_load import WORDS
from bench.servers import ServerProcess, start_hearth
from retrieval.chunk_store import ChunkStore
from retrieval.chunking import Chunk, chunk_sections
from retrieval.parsing import parse
from server.engine.embedder import Embedder
from server.llama.model import LlamaModel

N_PDFS, PAGES_PER_PDF, WORDS_PER_PAGE = 6, 20, 320
SEARCH_SIZES = (10_000, 100_000)
SEARCH_QUERIES = 60


@dataclass
class IngestResult:
    pages: int
    chunks: int
    seconds: float
    raw_embed_seconds: float

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.seconds

    @property
    def chunks_per_second(self) -> float:
        return self.chunks / self.seconds

    @property
    def embedding_share(self) -> float:
        """Fraction of the pipeline's time the embedding alone would take."""
        return self.raw_embed_seconds / self.seconds


def write_corpus(directory: Path) -> list[Path]:
    from fpdf import FPDF

    rng = random.Random(7)
    paths = []
    for d in range(N_PDFS):
        pdf = FPDF()
        pdf.set_font("helvetica", size=10)
        for p in range(PAGES_PER_PDF):
            pdf.add_page()
            paragraphs = []
            for _ in range(4):
                words = [rng.choice(WORDS) for _ in range(WORDS_PER_PAGE // 4)]
                paragraphs.append(f"Section {d}.{p}. " + " ".join(words) + ".")
            pdf.multi_cell(0, 5, "\n\n".join(paragraphs))
        path = directory / f"manual-{d}.pdf"
        pdf.output(str(path))
        paths.append(path)
    return paths


def ingest_through_server(server: ServerProcess, paths: list[Path]) -> tuple[float, int]:
    with httpx.Client(base_url=f"{server.url}/v1", timeout=600) as http:
        store = http.post("/vector_stores", json={"name": "bench"}).json()["id"]
        t0 = time.perf_counter()
        ids = []
        for path in paths:
            f = http.post(
                "/files",
                data={"purpose": "assistants"},
                files={"file": (path.name, io.BytesIO(path.read_bytes()))},
            ).json()
            http.post(f"/vector_stores/{store}/files", json={"file_id": f["id"]})
            ids.append(f["id"])
        chunks = 0
        for file_id in ids:
            while True:
                state = http.get(f"/vector_stores/{store}/files/{file_id}").json()
                if state["status"] != "in_progress":
                    break
                time.sleep(0.05)
            if state["status"] != "completed":
                raise RuntimeError(f"ingestion failed: {state['last_error']}")
            chunks += state["chunk_count"]
        return time.perf_counter() - t0, chunks


def raw_embedding_seconds(embed_model: LlamaModel, paths: list[Path], threads: int) -> float:
    count = lambda text: len(embed_model.tokenize(text, add_special=False))  # noqa: E731
    chunks: list[Chunk] = []
    for path in paths:
        chunks += chunk_sections(parse(path, path.name), count)
    inputs = [embed_model.tokenize(c.text, add_special=True) for c in chunks]
    embedder = Embedder(embed_model, 512, 32, threads)
    embedder.start()
    try:
        t0 = time.perf_counter()
        embedder.submit(inputs).result()
        return time.perf_counter() - t0
    finally:
        embedder.stop()


def measure_ingestion(logs: Path, embed_model: LlamaModel, threads: int) -> IngestResult:
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_corpus(Path(tmp))
        raw = raw_embedding_seconds(embed_model, paths, threads)
        server = start_hearth(logs, "--log-level", "warning", "--data-dir", str(Path(tmp) / "d"))
        try:
            seconds, chunks = ingest_through_server(server, paths)
        finally:
            server.stop()
    return IngestResult(N_PDFS * PAGES_PER_PDF, chunks, seconds, raw)


def measure_search(dim: int = 384) -> dict[int, tuple[float, float]]:
    """size → (p50 ms, p99 ms) of hybrid search."""
    rng = np.random.default_rng(3)
    words = np.array(WORDS + [f"term{i}" for i in range(2000)])
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = ChunkStore(str(Path(tmp) / "lancedb"), dim)
        size = 0
        for target in SEARCH_SIZES:
            while size < target:
                n = min(10_000, target - size)
                texts = [" ".join(rng.choice(words, 40)) for _ in range(n)]
                chunks = [Chunk(i, t, 0, len(t), 1, None, "middle") for i, t in enumerate(texts)]
                vectors = rng.standard_normal((n, dim)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                store.upsert("vs_bench", f"file-{size}", "synthetic.txt", chunks, vectors, {})
                size += n
            store.search(["vs_bench"], "warm up", vectors[0], 10)  # builds the FTS index
            times = []
            for _ in range(SEARCH_QUERIES):
                query = " ".join(rng.choice(words, 3))
                vector = rng.standard_normal(dim).astype(np.float32)
                t0 = time.perf_counter()
                store.search(["vs_bench"], query, vector, 10)
                times.append((time.perf_counter() - t0) * 1000)
            out[target] = (float(np.percentile(times, 50)), float(np.percentile(times, 99)))
    return out


def render(ingest: IngestResult, search: dict[int, tuple[float, float]]) -> str:
    overhead = 1 - ingest.embedding_share
    lines = [
        "",
        "## Retrieval: ingestion and search",
        "",
        f"Ingestion of {N_PDFS} generated PDFs x {PAGES_PER_PDF} pages (~{WORDS_PER_PAGE} "
        "words a page) through a running server: upload, attach, wait until indexed.",
        "",
        "| pages/s | chunks/s | raw embedding of the same chunks | pipeline overhead |",
        "|---|---|---|---|",
        f"| {ingest.pages_per_second:.1f} | {ingest.chunks_per_second:.1f} | "
        f"{ingest.raw_embed_seconds:.1f} s of {ingest.seconds:.1f} s | {overhead:.0%} |",
        "",
        "Hybrid search latency (vector + full text, fused), LanceDB only: no HTTP, no query "
        f"embedding; {SEARCH_QUERIES} queries, top 10.",
        "",
        "| chunks | p50 ms | p99 ms |",
        "|---|---|---|",
    ]
    for size, (p50, p99) in search.items():
        lines.append(f"| {size:,} | {p50:.1f} | {p99:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import os

    from server.llama.log import route_llama_logs_to_python
    from server.model_files import prepare_default_embedding_model
    from server.settings import load_settings

    route_llama_logs_to_python()
    model = LlamaModel(prepare_default_embedding_model(load_settings().storage.resolved_data_dir()))
    with tempfile.TemporaryDirectory() as logs:
        result = measure_ingestion(Path(logs), model, os.cpu_count() or 1)
    model.close()
    print(render(result, measure_search()))
