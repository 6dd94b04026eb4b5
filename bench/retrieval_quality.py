"""Retrieval quality for `make bench`: each stage on Hearth's own set and on real manuals.

    python -m bench.retrieval_quality [--rerank-model FILE.gguf] [--write docs/benchmarks.md]

- Hearth's own set (bench/retrieval_eval.py: a generated PDF and a Markdown FAQ) and the
  Debian-manuals set (bench/debian_docs/: four LaTeX/Sphinx manuals, 668 pages, questions
  written as users ask them), each ingested into a fresh server and evaluated stage by
  stage: vector, text, hybrid, and hybrid + rerank when a reranker is given.
- The reranker's added latency per query for 20 and 50 candidates of ~256 tokens, measured
  in-process on a random cross-encoder of MiniLM-L6's size (it costs what
  cross-encoder/ms-marco-MiniLM-L6-v2 costs; its scores are not used).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.debian_docs.fetch import QUESTIONS, FetchError, fetch
from bench.random_cross_encoder import MINILM_L6, write_random_cross_encoder
from bench.report import write_section
from bench.retrieval_eval import write_corpus
from bench.servers import start_hearth
from retrieval.client import HearthClient
from retrieval.evaluation import StageScore, evaluate, load_questions, render, render_misses

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hearth" / "bench"
CANDIDATES = (20, 50)


def evaluate_set(
    logs: Path,
    docs: list[Path],
    qa: Path,
    rerank_model: Path | None,
    server_args: list[str] | None = None,
) -> tuple[list[StageScore], list[dict], float]:
    """(scores per stage, questions, ingestion seconds) of a fresh server."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = ["--rerank-model", str(rerank_model)] if rerank_model else []
        extra += server_args or []
        server = start_hearth(logs, "--log-level", "warning", "--data-dir", f"{tmp}/data", *extra)
        try:
            client = HearthClient(server.url)
            t0 = time.monotonic()
            results = client.ingest(docs, "quality", quiet=True)
            seconds = time.monotonic() - t0
            failed = [r for r in results if r["status"] != "completed"]
            if failed:
                raise RuntimeError(f"ingestion failed: {failed}")
            questions = load_questions(qa)
            return evaluate(client, questions, "quality"), questions, seconds
        finally:
            server.stop()


def rerank_latency(threads: int) -> dict[int, float]:
    """Candidates -> median ms to rerank them for one query."""
    from server.bert_gguf import convert
    from server.engine.reranker import Reranker
    from server.llama.log import route_llama_logs_to_python
    from server.llama.model import LlamaModel

    route_llama_logs_to_python()
    words = [f"w{i}" for i in range(2000)]
    with tempfile.TemporaryDirectory() as tmp:
        source = write_random_cross_encoder(Path(tmp) / "ce", words, MINILM_L6)
        model = LlamaModel(convert(source, Path(tmp) / "ce.gguf"))
        reranker = Reranker(model, 4096, 8, threads)
        reranker.start()
        try:
            document = " ".join(words[i % 2000] for i in range(240))  # ~256 tokens a pair
            out = {}
            for n in CANDIDATES:
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    reranker.score("how do I skip the tests", [document] * n).result()
                    times.append((time.perf_counter() - t0) * 1000)
                out[n] = statistics.median(times)
            return out
        finally:
            reranker.stop()
            model.close()


def render_report(
    own: tuple[list[StageScore], list[dict], float],
    debian: tuple[list[StageScore], list[dict], float] | None,
    latency: dict[int, float],
    reranker: str | None,
) -> str:
    lines = [
        "## Retrieval quality: each stage, Hearth's own set and real manuals",
        "",
        "`python -m bench.retrieval_quality` (`hearth eval retrieval QA.json --store NAME` "
        "on your own documents). A question counts as found at the first result that holds "
        "its answer; recall@k, MRR and nDCG@10 as in `retrieval/evaluation.py`.",
        "",
        f"Reranker: {reranker or 'none (no reranker is packaged; see README)'}.",
        "",
        f"### Hearth's own set ({own[0][0].questions} questions, generated PDF and FAQ)",
        "",
        render(own[0]),
        "",
    ]
    if debian is not None:
        scores, questions, seconds = debian
        lines += [
            f"### Debian manuals ({scores[0].questions} questions, 4 PDFs, 668 pages; "
            f"ingested in {seconds:.0f} s)",
            "",
            render(scores),
            "",
            "Not first in the last stage (rank per stage, - = not in the top 10):",
            "",
            render_misses(scores, questions),
            "",
        ]
    lines += [
        "### Reranker latency",
        "",
        "Added time per query to rerank the first stage's candidates (~256-token chunks) "
        "with a cross-encoder of MiniLM-L6's size, in-process, on this machine:",
        "",
        "| candidates | ms per query |",
        "|---|---|",
        *[f"| {n} | {ms:.0f} |" for n, ms in latency.items()],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval_quality")
    parser.add_argument("--rerank-model", type=Path, help="a reranker GGUF to evaluate")
    parser.add_argument("--write", type=Path, help="put the figures into this Markdown file")
    parser.add_argument("--no-debian", action="store_true", help="skip the Debian manuals")
    args = parser.parse_args(argv)
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as logs_dir:
        logs = Path(logs_dir)
        with tempfile.TemporaryDirectory() as tmp:
            docs, qa = write_corpus(Path(tmp))
            own = evaluate_set(logs, docs, qa, args.rerank_model)
        debian = None
        if not args.no_debian:
            try:
                manuals = fetch(CACHE / "debian-docs")
            except FetchError as e:
                print(f"skipping the Debian manuals: {e}")
            else:
                debian = evaluate_set(logs, manuals, QUESTIONS, args.rerank_model)
    report = render_report(
        own,
        debian,
        rerank_latency(threads),
        args.rerank_model.name if args.rerank_model else None,
    )
    print(report)
    if args.write:
        write_section(args.write, "retrieval-quality", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
