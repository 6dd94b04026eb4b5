"""`hearth eval retrieval QA.json --store NAME`: recall@k, MRR and nDCG@10 of each stage.

QA.json is a list of questions, each naming where its answer is:
  {"question": "...", "file": "manual.pdf", "page": 3}       (page optional)
  {"question": "...", "contains": "E1042"}                    (a string the chunk holds)
A question is found at rank r when the r-th result matches (whitespace and case do not
matter in `contains`); recall@k counts questions found within the first k, MRR averages
1/r (0 when not found), nDCG@10 scores every matching chunk in the first 10 (gain 1,
discount log2(rank + 1)) against the best order possible given how many matched.

The stages, side by side: vector, text (full text), hybrid (both fused with exact terms),
and hybrid + rerank when the server has a reranker (each stage no worse than the one
before it is the goal).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval.client import ClientError, HearthClient

# (label, search mode, rerank)
STAGES: tuple[tuple[str, str, bool], ...] = (
    ("vector", "vector", False),
    ("text", "text", False),
    ("hybrid", "hybrid", False),
    ("hybrid + rerank", "hybrid", True),
)
NDCG_DEPTH = 10


@dataclass(frozen=True)
class StageScore:
    stage: str
    recall: dict[int, float]
    mrr: float
    ndcg: float
    questions: int
    ranks: list[int | None] = field(default_factory=list)  # per question, None: not found


def load_questions(path: Path) -> list[dict[str, Any]]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ClientError(f"cannot read {path}: {e}") from e
    if not isinstance(items, list) or not items:
        raise ClientError(f"{path} must hold a non-empty JSON list of questions")
    for i, item in enumerate(items):
        if (
            not isinstance(item, dict)
            or not item.get("question")
            or not (item.get("file") or item.get("contains"))
        ):
            raise ClientError(f"question {i} needs 'question' and 'file' or 'contains'")
    return items


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def hit_matches(item: dict[str, Any], hit: dict[str, Any]) -> bool:
    if item.get("file") and hit["filename"] != item["file"]:
        return False
    if item.get("page") is not None and hit.get("page") != item["page"]:
        return False
    text = hit["content"][0]["text"]
    return not (item.get("contains") and _norm(item["contains"]) not in _norm(text))


def first_rank(item: dict[str, Any], hits: list[dict[str, Any]]) -> int | None:
    return next((r for r, hit in enumerate(hits, 1) if hit_matches(item, hit)), None)


def ndcg(item: dict[str, Any], hits: list[dict[str, Any]], depth: int = NDCG_DEPTH) -> float:
    gains = [1.0 if hit_matches(item, h) else 0.0 for h in hits[:depth]]
    dcg = sum(g / math.log2(r + 1) for r, g in enumerate(gains, 1))
    ideal = sum(1 / math.log2(r + 1) for r in range(1, int(sum(gains)) + 1))
    return dcg / ideal if ideal else 0.0


def evaluate(
    client: HearthClient,
    questions: list[dict[str, Any]],
    store: str,
    ks: tuple[int, ...] = (1, 3, 5, 10),
) -> list[StageScore]:
    depth = max(*ks, NDCG_DEPTH)
    stages = [s for s in STAGES if not s[2] or client.has_reranker()]
    scores = []
    for label, mode, rerank in stages:
        ranks: list[int | None] = []
        gains: list[float] = []
        for q in questions:
            hits = client.search(q["question"], store, depth, mode, rerank)
            ranks.append(first_rank(q, hits))
            gains.append(ndcg(q, hits))
        n = len(ranks)
        recall = {k: sum(1 for r in ranks if r is not None and r <= k) / n for k in ks}
        mrr = sum(1 / r for r in ranks if r is not None) / n
        scores.append(StageScore(label, recall, mrr, sum(gains) / n, n, ranks))
    return scores


def render(scores: list[StageScore]) -> str:
    ks = sorted(scores[0].recall)
    head = "| stage | " + " | ".join(f"recall@{k}" for k in ks) + f" | MRR | nDCG@{NDCG_DEPTH} |"
    rows = [head, "|---" * (len(ks) + 3) + "|"]
    for s in scores:
        rows.append(
            f"| {s.stage} | "
            + " | ".join(f"{s.recall[k]:.2f}" for k in ks)
            + f" | {s.mrr:.3f} | {s.ndcg:.3f} |"
        )
    return "\n".join(rows)


def render_misses(scores: list[StageScore], questions: list[dict[str, Any]]) -> str:
    """The questions the last stage does not put first, with each stage's rank."""
    last = scores[-1]
    lines = []
    for i, q in enumerate(questions):
        if last.ranks[i] == 1:
            continue
        ranks = ", ".join(f"{s.stage} {s.ranks[i] or '-'}" for s in scores)
        lines.append(f"- {q['question']} ({ranks})")
    return "\n".join(lines)
