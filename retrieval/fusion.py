"""How the ranked lists of a hybrid search become one: weighted reciprocal rank fusion.

Each list (vector, full text, exact terms) gives a chunk weight / (RRF_K + rank); the sums
are divided by the most any chunk could get, so a hybrid score lies in 0..1.

The exact-terms list is what keeps fusion from diluting exact matches: a query naming an
identifier, an option, a path or a number ("DEB_BUILD_OPTIONS", "--no-deps", "/var/tmp",
"E1042", "every 2:2") wants the chunks that spell it, which an embedding of a small model
barely tells apart from its neighbours and a word-splitting full-text index cuts into
pieces. Candidates from the other lists that contain such a term verbatim are ranked by how
many of the query's terms they contain.

The weights were chosen on Hearth's evaluation sets (bench/retrieval_eval.py and the Debian
manuals in bench/debian_docs/) by `python -m bench.fusion_tuning`, and are held fixed; the
figures that chose them are in docs/benchmarks.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# Reciprocal rank fusion constant (Cormack et al.): score = sum weight / (k + rank).
RRF_K = 60


@dataclass(frozen=True)
class FusionWeights:
    vector: float = 1.0
    text: float = 1.0
    exact: float = 1.0
    k: int = RRF_K  # smaller: the first few ranks of each list count for more

    def of(self, name: str) -> float:
        return float(getattr(self, name))


# Chosen by bench/fusion_tuning.py over 400 weightings (see the module's docstring): on
# Hearth's own set (24 questions) and the Debian manuals (38), the best mean of
# (MRR + recall@5) / 2 was 0.906, against 0.893 for equal weights with k = 60 (own set MRR
# 0.948 vs 0.938, recall@5 1.00 vs 0.96; manuals MRR 0.730 either way, recall@5 0.95).
# A small k lets a list's first few ranks decide; the exact-terms list breaks ties. The
# ten best weightings were within one question of each other on either set.
DEFAULT_WEIGHTS = FusionWeights(vector=2.0, text=1.5, exact=0.5, k=5)

# A query word is an exact term when it is not plain prose: it holds a digit, or a
# character words do not (- _ . / $ = ~ : @ # + %) between other characters. (Words in
# capitals are not: "FTP" or "NFS" in a question are prose, and matched them everywhere.)
# Up to 8 are used.
_WORD = re.compile("[^\\s\"'`\u201c\u201d\u2018\u2019(),;?!]+")
_PLAIN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
MAX_EXACT_TERMS = 8
MIN_EXACT_CHARS = 2


def exact_terms(query: str) -> list[str]:
    terms: list[str] = []
    for match in _WORD.finditer(query):
        word = match.group().strip(".:")
        if len(word) < MIN_EXACT_CHARS or _PLAIN.fullmatch(word):
            continue
        if word.lower() not in (t.lower() for t in terms):
            terms.append(word)
        if len(terms) == MAX_EXACT_TERMS:
            break
    return terms


def exact_ranking(
    candidates: Sequence[str], text_of: Callable[[str], str], terms: Sequence[str]
) -> list[str]:
    """The candidates containing at least one term (case-insensitive), most terms first;
    ties keep the candidates' order."""
    if not terms:
        return []
    lowered = [t.lower() for t in terms]
    counted = []
    for order, chunk_id in enumerate(candidates):
        text = text_of(chunk_id).lower()
        n = sum(1 for t in lowered if t in text)
        if n:
            counted.append((-n, order, chunk_id))
    return [chunk_id for _, _, chunk_id in sorted(counted)]


def fuse(
    ranked: Mapping[str, Sequence[str]], weights: FusionWeights = DEFAULT_WEIGHTS
) -> list[tuple[str, float]]:
    """(chunk id, score in 0..1), best first, from lists named vector / text / exact."""
    scores: dict[str, float] = {}
    best = 0.0
    for name, ids in ranked.items():
        weight = weights.of(name)
        if weight <= 0 or not ids:
            continue
        best += weight / (weights.k + 1)
        for rank, chunk_id in enumerate(ids, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + weight / (weights.k + rank)
    if best == 0:
        return []
    order = sorted(scores, key=lambda i: scores[i], reverse=True)
    return [(i, scores[i] / best) for i in order]
