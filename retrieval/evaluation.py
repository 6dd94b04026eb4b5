"""`hearth eval retrieval QA.json --store NAME`: recall@k and MRR, per search mode.

QA.json is a list of questions, each naming where its answer is:
  {"question": "...", "file": "manual.pdf", "page": 3}       (page optional)
  {"question": "...", "contains": "E1042"}                    (a string the chunk holds)
A question is found at rank r when the r-th result matches; recall@k counts questions found
within the first k, MRR averages 1/r (0 when not found).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.client import ClientError, HearthClient

MODES = ("vector", "text", "hybrid")


@dataclass(frozen=True)
class ModeScore:
    mode: str
    recall: dict[int, float]
    mrr: float
    questions: int


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


def hit_matches(item: dict[str, Any], hit: dict[str, Any]) -> bool:
    if item.get("file") and hit["filename"] != item["file"]:
        return False
    if item.get("page") is not None and hit.get("page") != item["page"]:
        return False
    text = hit["content"][0]["text"]
    return not (item.get("contains") and item["contains"].lower() not in text.lower())


def first_rank(item: dict[str, Any], hits: list[dict[str, Any]]) -> int | None:
    return next((r for r, hit in enumerate(hits, 1) if hit_matches(item, hit)), None)


def evaluate(
    client: HearthClient,
    questions: list[dict[str, Any]],
    store: str,
    ks: tuple[int, ...] = (1, 3, 5, 10),
) -> list[ModeScore]:
    scores = []
    depth = max(ks)
    for mode in MODES:
        ranks = [first_rank(q, client.search(q["question"], store, depth, mode)) for q in questions]
        n = len(ranks)
        recall = {k: sum(1 for r in ranks if r is not None and r <= k) / n for k in ks}
        mrr = sum(1 / r for r in ranks if r is not None) / n
        scores.append(ModeScore(mode, recall, mrr, n))
    return scores


def render(scores: list[ModeScore]) -> str:
    ks = sorted(scores[0].recall)
    head = "| mode | " + " | ".join(f"recall@{k}" for k in ks) + " | MRR |"
    rows = [head, "|---" * (len(ks) + 2) + "|"]
    for s in scores:
        rows.append(
            f"| {s.mode} | " + " | ".join(f"{s.recall[k]:.2f}" for k in ks) + f" | {s.mrr:.3f} |"
        )
    return "\n".join(rows)
