"""Choose hybrid search's fusion weights on evaluation sets (how DEFAULT_WEIGHTS in
retrieval/fusion.py was chosen).

    python -m bench.fusion_tuning DATA_DIR:QA.json [DATA_DIR:QA.json ...]

Each DATA_DIR is a stopped server's data directory whose vector stores hold the set's
documents. The first-stage lists (vector, full text, exact terms) are computed once per
question, straight from LanceDB with the embedding model in-process; every weighting on a
grid is then scored by fusing those lists again. The objective is the mean over the sets
of (MRR + recall@5) / 2, so no set's rank one is bought with another's top five.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.catalog import Catalog
from retrieval.chunk_store import ChunkStore
from retrieval.evaluation import hit_matches
from retrieval.fusion import DEFAULT_WEIGHTS, FusionWeights, fuse

GRID = {
    "vector": (0.5, 1.0, 1.5, 2.0),
    "text": (0.0, 0.5, 1.0, 1.5, 2.0),
    "exact": (0.0, 0.5, 1.0, 2.0, 3.0),
    "k": (5, 10, 20, 60),
}
DEPTH = 50


@dataclass
class Question:
    item: dict[str, Any]
    lists: dict[str, list[str]]  # list name -> chunk ids, best first
    rows: dict[str, dict[str, Any]]  # chunk id -> row


def _as_hit(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "filename": row["filename"],
        "page": row["page"],
        "content": [{"type": "text", "text": row["text"]}],
    }


def collect(data_dir: Path, qa: Path) -> list[Question]:
    from server.engine.embedder import Embedder
    from server.llama.log import route_llama_logs_to_python
    from server.llama.model import LlamaModel
    from server.model_files import prepare_default_embedding_model
    from server.settings import load_settings

    route_llama_logs_to_python()
    models_home = load_settings().storage.resolved_data_dir()
    model = LlamaModel(prepare_default_embedding_model(models_home))
    embedder = Embedder(model, 512, 32, 2)
    embedder.start()
    catalog = Catalog(data_dir)
    try:
        store_ids = [s.id for s in catalog.list_stores()]
        store = ChunkStore(str(data_dir / "lancedb"), embedder.dim)
        out = []
        for item in json.loads(qa.read_text(encoding="utf-8")):
            tokens = embedder.tokenize(item["question"])[: embedder.max_tokens]
            vector = embedder.submit([tokens]).result()[0]
            ranked = store.ranked_lists(store_ids, item["question"], vector, DEPTH, "hybrid")
            rows = {r["id"]: r for rs in ranked.values() for r in rs}
            out.append(Question(item, {k: [r["id"] for r in v] for k, v in ranked.items()}, rows))
        return out
    finally:
        catalog.close()
        embedder.stop()
        model.close()


def score(questions: list[Question], weights: FusionWeights) -> tuple[float, float, float]:
    """(recall@1, recall@5, MRR)"""
    r1 = r5 = mrr = 0.0
    for q in questions:
        order = [i for i, _ in fuse(q.lists, weights)][:10]
        rank = next(
            (n for n, i in enumerate(order, 1) if hit_matches(q.item, _as_hit(q.rows[i]))), None
        )
        if rank is not None:
            r1 += rank == 1
            r5 += rank <= 5
            mrr += 1 / rank
    n = len(questions)
    return r1 / n, r5 / n, mrr / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", help="DATA_DIR:QA.json")
    args = parser.parse_args()
    sets = []
    for spec in args.sets:
        data_dir, qa = spec.split(":", 1)
        sets.append((Path(qa).stem, collect(Path(data_dir), Path(qa))))
    results = []
    for v, t, e, k in itertools.product(*GRID.values()):
        weights = FusionWeights(vector=v, text=t, exact=e, k=int(k))
        per_set = [score(qs, weights) for _, qs in sets]
        objective = sum((mrr + r5) / 2 for _, r5, mrr in per_set) / len(per_set)
        results.append((objective, weights, per_set))
    results.sort(key=lambda r: r[0], reverse=True)
    names = [name for name, _ in sets]
    print("| weights (vector, text, exact, k) | objective | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    default = next(r for r in results if r[1] == DEFAULT_WEIGHTS)
    for objective, w, per_set in [*results[:10], default]:
        cells = " | ".join(f"R@1 {a:.2f} R@5 {b:.2f} MRR {c:.3f}" for a, b, c in per_set)
        mark = " (default)" if w == DEFAULT_WEIGHTS else ""
        print(f"| {w.vector}, {w.text}, {w.exact}, {w.k}{mark} | {objective:.3f} | {cells} |")


if __name__ == "__main__":
    main()
