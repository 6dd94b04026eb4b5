"""A small retrieval evaluation set of Hearth's own, built from generated documents.

A 12-page product manual (PDF) with error codes that differ only in their digits, and a
Markdown FAQ answered in other words than the questions use. `write_corpus` writes the
documents and QA.json; `make bench` ingests them into a fresh server and reports recall@k
and MRR for vector, text and hybrid search (retrieval/evaluation.py).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAUSES = [
    ("the intake valve is stuck", "tap the valve housing and restart"),
    ("the pump is running dry", "refill the reservoir before restarting"),
    ("the filter is clogged", "rinse the filter under warm water"),
    ("the pressure sensor is unplugged", "reseat the sensor cable"),
    ("the cooling fan is blocked", "clear the vents at the back"),
    ("the main fuse has blown", "replace the 10 A fuse"),
]
FAQ = [
    (
        "Warranty",
        "Every unit is covered for two years from the date of purchase.",
        "How long is the guarantee on the pump?",
        "two years",
    ),
    (
        "Shipping",
        "Orders leave our warehouse within three working days.",
        "When will my order be dispatched?",
        "three working days",
    ),
    (
        "Returns",
        "You may send the product back within 30 days for a full refund.",
        "Can I get my money back if I return it?",
        "full refund",
    ),
    (
        "Cleaning",
        "Wipe the housing with a damp cloth; never use solvents.",
        "What should I clean the casing with?",
        "damp cloth",
    ),
    (
        "Noise",
        "A humming sound during the first minute is normal while the motor primes.",
        "Is it normal that the device hums when switched on?",
        "humming",
    ),
    (
        "Power",
        "The pump draws 450 watts at full load and 5 watts on standby.",
        "How much electricity does it use?",
        "450 watts",
    ),
]


def write_corpus(directory: Path) -> tuple[list[Path], Path]:
    from fpdf import FPDF

    rng = random.Random(11)
    codes = rng.sample(range(1000, 9999), 36)
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    questions = []
    for page in range(12):
        pdf.add_page()
        lines = []
        for j in range(3):
            code = codes[page * 3 + j]
            cause, fix = CAUSES[(page + j) % len(CAUSES)]
            lines.append(f"Error E{code}: {cause}. To fix it, {fix}.")
            if (page * 3 + j) % 2 == 0:
                questions.append(
                    {
                        "question": f"What does error E{code} mean?",
                        "file": "pump-manual.pdf",
                        "page": page + 1,
                        "contains": f"E{code}",
                    }
                )
        pdf.multi_cell(0, 6, f"Troubleshooting, part {page + 1}.\n\n" + "\n\n".join(lines))
    manual = directory / "pump-manual.pdf"
    pdf.output(str(manual))
    faq = directory / "faq.md"
    faq.write_text(
        "# Frequently asked questions\n\n"
        + "\n\n".join(f"## {title}\n\n{answer}" for title, answer, _, _ in FAQ)
        + "\n"
    )
    questions += [{"question": q, "file": "faq.md", "contains": c} for _, _, q, c in FAQ]
    qa = directory / "QA.json"
    qa.write_text(json.dumps(questions, indent=1))
    return [manual, faq], qa


def run(logs: Path) -> str:
    """Ingest the set into a fresh server and report the three modes (Markdown)."""
    import tempfile

    from bench.servers import start_hearth
    from retrieval.client import HearthClient
    from retrieval.evaluation import evaluate, load_questions, render

    with tempfile.TemporaryDirectory() as tmp:
        docs, qa = write_corpus(Path(tmp))
        server = start_hearth(logs, "--log-level", "warning", "--data-dir", f"{tmp}/data")
        try:
            client = HearthClient(server.url)
            client.ingest(docs, "evalset", quiet=True)
            questions = load_questions(qa)
            table = render(evaluate(client, questions, "evalset"))
            hit_rate = rag_cache_hit_rate(
                server.url, client.store_id("evalset", False), [q["question"] for q in questions]
            )
        finally:
            server.stop()
    return (
        "\n## Retrieval evaluation: Hearth's own set\n\n"
        f"{len(questions)} questions over a generated 12-page PDF manual (36 error codes that "
        "differ only in their digits) and a Markdown FAQ asked in other words "
        "(`bench/retrieval_eval.py`; `hearth eval retrieval QA.json --store NAME`).\n\n"
        f"{table}\n\n"
        f"Prefix cache on a RAG workload that repeats documents (every question asked with "
        f"`retrieval`, then the whole set again, questions in a new order): "
        f"{hit_rate[0]:.0%} of prompt tokens came from the cache over both rounds, "
        f"{hit_rate[1]:.0%} in the second.\n"
    )


def rag_cache_hit_rate(url: str, store_id: str, questions: list[str]) -> tuple[float, float]:
    """(hit rate over both rounds, hit rate in the second round) of augmented chat."""
    import httpx

    totals = [[0, 0], [0, 0]]
    with httpx.Client(base_url=f"{url}/v1", timeout=600) as http:
        model = http.get("/models").json()["data"][0]["id"]
        order = list(questions)
        for round_ in range(2):
            for question in order:
                usage = http.post(
                    "/chat/completions",
                    json={
                        "model": model,
                        "max_tokens": 1,
                        "messages": [{"role": "user", "content": question}],
                        "retrieval": {"vector_store_ids": [store_id], "max_num_results": 3},
                    },
                ).json()["usage"]
                totals[round_][0] += usage["prompt_tokens_details"]["cached_tokens"]
                totals[round_][1] += usage["prompt_tokens"]
            random.Random(5).shuffle(order)
    both = (totals[0][0] + totals[1][0]) / (totals[0][1] + totals[1][1])
    return both, totals[1][0] / totals[1][1]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as logs:
        print(run(Path(logs)))
