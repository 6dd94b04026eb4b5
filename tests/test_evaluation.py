"""hearth eval retrieval over Hearth's own small evaluation set."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest

from bench.retrieval_eval import write_corpus
from retrieval.evaluation import first_rank, hit_matches, ndcg
from tests.conftest import hearth_cli, start_server, stop_server


def hit(filename: str, page: int | None, text: str) -> dict:
    return {"filename": filename, "page": page, "content": [{"type": "text", "text": text}]}


def test_ndcg_and_whitespace() -> None:
    item = {"question": "q", "contains": "two  years"}
    hits = [hit("a", None, "nothing"), hit("a", None, "covered for two\nyears"), hit("b", None, "")]
    assert first_rank(item, hits) == 2
    assert ndcg(item, hits) == pytest.approx(1 / math.log2(3))
    assert ndcg(item, hits[1:2]) == 1.0 and ndcg(item, hits[:1]) == 0.0


def test_matching_rules() -> None:
    item = {"question": "q", "file": "a.pdf", "page": 2, "contains": "E1042"}
    assert hit_matches(item, hit("a.pdf", 2, "Error E1042: stuck"))
    assert not hit_matches(item, hit("a.pdf", 3, "Error E1042: stuck"))
    assert not hit_matches(item, hit("b.pdf", 2, "Error E1042: stuck"))
    assert not hit_matches(item, hit("a.pdf", 2, "Error E1024: stuck"))
    hits = [hit("x.md", None, "no"), hit("a.pdf", 2, "E1042 yes")]
    assert first_rank(item, hits) == 2 and first_rank(item, hits[:1]) is None


def test_eval_cli_reports_each_mode(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    _, qa = write_corpus(docs)
    server = start_server(tmp_path, "--data-dir", str(tmp_path / "data"))
    try:

        def hearth(*args: str) -> subprocess.CompletedProcess[str]:
            return hearth_cli(*args, "--url", server.url, timeout=300)

        assert (
            hearth(
                "ingest",
                str(docs / "pump-manual.pdf"),
                str(docs / "faq.md"),
                "--store",
                "evalset",
                "--quiet",
            ).returncode
            == 0
        )
        r = hearth("eval", "retrieval", str(qa), "--store", "evalset")
    finally:
        stop_server(server)
    assert r.returncode == 0, r.stderr
    rows = {
        line.split("|")[1].strip(): [float(x) for x in line.split("|")[2:-1]]
        for line in r.stdout.splitlines()
        if line.startswith("| ") and "stage" not in line
    }
    assert list(rows) == ["vector", "text", "hybrid"]  # no reranker on this server
    for values in rows.values():
        recalls, mrr, ndcg = values[:-2], values[-2], values[-1]
        assert all(0 <= v <= 1 for v in values)
        assert recalls == sorted(recalls)  # recall@k grows with k
        assert mrr <= recalls[-1] + 1e-9 and ndcg <= recalls[-1] + 1e-9
    # Hearth's own set: hybrid no worse than either list alone, rank one mostly right.
    assert rows["hybrid"][2] >= 0.9  # recall@5
    assert rows["hybrid"][4] >= max(rows["vector"][4], rows["text"][4]) - 0.02  # MRR
    assert rows["hybrid"][4] >= 0.85


def test_eval_rejects_a_bad_question_file(tmp_path: Path) -> None:
    bad = tmp_path / "QA.json"
    bad.write_text('[{"question": "no target"}]')
    r = hearth_cli(
        "eval", "retrieval", str(bad), "--store", "x", "--url", "http://127.0.0.1:9", timeout=60
    )
    assert r.returncode == 1 and "needs 'question'" in r.stderr
