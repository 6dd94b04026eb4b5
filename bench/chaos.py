"""`make chaos`: ingest a folder of mixed documents while the server is killed with SIGKILL
at random moments, and check that nothing was lost, duplicated or left behind.

A seeded driver uploads PDFs, Markdown and text files (some large) into one vector store,
then kills the server (kill -9: no shutdown code runs) at random moments, restarting it
each time and deleting, detaching or re-attaching a file between kills. At the end, with
every job finished: each attached file is `completed` or `failed` with a reason; each
completed file has its chunks in LanceDB exactly once (chunk indexes 0..n-1); no chunk of
a deleted or detached file is anywhere; and search finds each completed file by its own
distinctive word. The suite runs 3 kills (tests/test_document_faults.py), this 10.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import lancedb
import openai
from fpdf import FPDF

from bench.report import write_section
from bench.servers import ServerProcess, start_hearth

TOPICS = ("boiler", "turbine", "valve", "pump", "compressor", "heater", "filter", "gearbox")


@dataclass
class Document:
    name: str
    marker: str  # a word no other document has
    data: bytes


def marker_of(i: int, seed: int) -> str:
    return f"zq{seed}marker{i:03d}"


def _paragraphs(i: int, n: int, marker: str) -> list[str]:
    topic = TOPICS[i % len(TOPICS)]
    out = [
        f"Paragraph {p} of document {i} explains how the {topic} is serviced: step {p} sets "
        f"bolt {p} to {10 + p % 40} newton metres and checks valve {p % 7}."
        for p in range(n)
    ]
    out.insert(n // 2, f"The inspection code of this {topic} manual is {marker}.")
    return out


def _pdf(paragraphs: list[str], per_page: int = 12) -> bytes:
    pdf = FPDF()
    pdf.set_font("helvetica", size=10)
    for start in range(0, len(paragraphs), per_page):
        pdf.add_page()
        pdf.multi_cell(0, 5, "\n\n".join(paragraphs[start : start + per_page]))
    return bytes(pdf.output())


def make_corpus(seed: int, n_docs: int = 12) -> list[Document]:
    """PDFs, Markdown and text, a third of them large (hundreds of paragraphs)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        marker = marker_of(i, seed)
        n = rng.choice((20, 40, 300)) if i % 3 else 300
        paragraphs = _paragraphs(i, n, marker)
        kind = ("pdf", "md", "txt")[i % 3]
        if kind == "pdf":
            data = _pdf(paragraphs)
        elif kind == "md":
            sections = [f"## Part {s}\n\n" + "\n\n".join(paragraphs[s::5]) for s in range(5)]
            data = (f"# Manual {i}\n\n" + "\n\n".join(sections)).encode()
        else:
            data = "\n\n".join(paragraphs).encode()
        docs.append(Document(f"doc{i:02d}.{kind}", marker, data))
    return docs


@dataclass
class ChaosReport:
    kills: int
    files: int
    completed: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # file -> reason
    removed: int = 0  # deleted or detached during the run
    chunks_checked: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.orphaned or self.not_found) and all(
            self.failed.values()
        )


def _client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=3)


def run_chaos(workdir: Path, kills: int, seed: int, n_docs: int = 12) -> ChaosReport:
    rng = random.Random(seed)
    data_dir = workdir / "data"
    docs = make_corpus(seed, n_docs)
    started = time.monotonic()
    server = start_hearth(workdir, "--data-dir", str(data_dir))
    try:
        client = _client(server)
        store = client.vector_stores.create(name="chaos")
        file_ids: dict[str, str] = {}  # document name -> file id
        for doc in docs:
            f = client.files.create(file=(doc.name, io.BytesIO(doc.data)), purpose="assistants")
            file_ids[doc.name] = f.id
            client.vector_stores.files.create(vector_store_id=store.id, file_id=f.id)
        removed: set[str] = set()
        for _ in range(kills):
            time.sleep(rng.uniform(0.2, 2.5))
            server.process.kill()  # SIGKILL: no shutdown code runs
            server.process.wait()
            server = start_hearth(workdir, "--data-dir", str(data_dir))
            client = _client(server)
            _meddle(client, store.id, docs, file_ids, removed, rng)
        _wait_idle(client, store.id)
        report = verify(client, data_dir, store.id, docs, file_ids, removed, kills)
    finally:
        server.stop()
    report.seconds = time.monotonic() - started
    return report


def _meddle(
    client: openai.OpenAI,
    store_id: str,
    docs: list[Document],
    file_ids: dict[str, str],
    removed: set[str],
    rng: random.Random,
) -> None:
    """Between kills: delete a file, detach one, re-attach one, or leave them be."""
    live = [d.name for d in docs if d.name not in removed]
    action = rng.choice(("none", "delete", "detach", "reattach", "reattach"))
    if action == "none" or len(live) <= n_keep(len(docs)):
        return
    name = rng.choice(live)
    if action == "delete":
        client.files.delete(file_ids[name])
        removed.add(name)
    elif action == "detach":
        client.vector_stores.files.delete(file_id=file_ids[name], vector_store_id=store_id)
        removed.add(name)
    else:
        client.vector_stores.files.create(
            vector_store_id=store_id, file_id=file_ids[name], attributes={"again": True}
        )


def n_keep(n_docs: int) -> int:
    """Most files stay, so there is something to find at the end."""
    return n_docs * 2 // 3


def _wait_idle(client: openai.OpenAI, store_id: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while client.vector_stores.retrieve(store_id).file_counts.in_progress:
        if time.monotonic() > deadline:
            raise RuntimeError("ingestion did not finish")
        time.sleep(0.5)


def verify(
    client: openai.OpenAI,
    data_dir: Path,
    store_id: str,
    docs: list[Document],
    file_ids: dict[str, str],
    removed: set[str],
    kills: int,
) -> ChaosReport:
    report = ChaosReport(kills, len(docs), removed=len(removed))
    table = lancedb.connect(str(data_dir / "lancedb")).open_table("chunks")
    rows = table.search().select(["file_id", "chunk_index"]).limit(table.count_rows()).to_list()
    per_file: dict[str, Counter[int]] = {}
    for row in rows:
        per_file.setdefault(row["file_id"], Counter())[row["chunk_index"]] += 1
    report.chunks_checked = len(rows)
    attached = {f.id: f for f in client.vector_stores.files.list(vector_store_id=store_id)}
    for doc in docs:
        file_id = file_ids[doc.name]
        counts = per_file.pop(file_id, Counter())
        if doc.name in removed:
            if counts:
                report.orphaned.append(f"{doc.name}: {sum(counts.values())} chunks left")
            continue
        vsf = attached.get(file_id)
        if vsf is None:
            report.lost.append(f"{doc.name}: no longer attached")
            continue
        if vsf.status == "failed":
            reason = (vsf.last_error.message if vsf.last_error else "") or ""
            report.failed[doc.name] = reason
            continue
        report.completed += 1
        expected = vsf.model_extra["chunk_count"]
        if sorted(counts) != list(range(expected)):
            report.lost.append(f"{doc.name}: chunk indexes {sorted(counts)[:5]}... of {expected}")
        if any(n > 1 for n in counts.values()):
            report.duplicated.append(f"{doc.name}: {sum(n - 1 for n in counts.values())} extra")
        hits = client.vector_stores.search(store_id, query=doc.marker, max_num_results=5).data
        if file_id not in [h.file_id for h in hits]:
            report.not_found.append(doc.name)
    for file_id, counts in per_file.items():  # chunks of a file nobody knows
        report.orphaned.append(f"{file_id}: {sum(counts.values())} chunks of an unknown file")
    return report


def render(report: ChaosReport, seed: int) -> str:
    failed = ", ".join(f"{k} ({v})" for k, v in report.failed.items()) or "none"
    return "\n".join(
        [
            "## Documents under kill -9 (`make chaos`)",
            "",
            f"{report.files} documents (PDF, Markdown, text; a third with 300 paragraphs) "
            f"ingested into one vector store while the server was killed with SIGKILL "
            f"{report.kills} times at random moments (seed {seed}) and restarted, with a file "
            "deleted, detached or re-attached between kills.",
            "",
            "| figure | value |",
            "|---|---|",
            f"| kills survived | {report.kills} |",
            f"| files completed / failed with a reason / removed | {report.completed} / "
            f"{len(report.failed)} / {report.removed} |",
            f"| chunks checked | {report.chunks_checked} |",
            f"| lost / duplicated / orphaned | {len(report.lost)} / {len(report.duplicated)} / "
            f"{len(report.orphaned)} |",
            f"| completed files not found by their own word | {len(report.not_found)} |",
            f"| wall time | {report.seconds:.0f} s |",
            "",
            f"Failed files: {failed}.",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--write", type=Path, help="put the figures into this Markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = run_chaos(Path(tmp), args.kills, args.seed)
    text = render(report, args.seed)
    print(text)
    for problem in report.lost + report.duplicated + report.orphaned + report.not_found:
        print("problem:", problem, file=sys.stderr)
    if args.write:
        write_section(args.write, "chaos", text)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
