"""From scores to a new order of the fetched hits.

The window (the first `len(rerank_scores)` hits) is re-ordered by the reranker; hits the model did not score (a
partial result) follow the scored ones in the cluster's order, and hits past the window keep the cluster's order
after them, so consecutive pages never repeat or drop a hit.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RankedHit:
    position: int  # index into the cluster's hits
    score: float | None  # the new `_score`; None keeps the cluster's
    reranked: bool


def rank(n_hits: int, rerank_scores: Sequence[float | None]) -> list[RankedHit]:
    window = min(len(rerank_scores), n_hits)
    scored = [i for i in range(window) if rerank_scores[i] is not None]
    # A stable sort on the negated score keeps the cluster's order between equal scores.
    scored.sort(key=lambda i: -rerank_scores[i])  # type: ignore[operator]
    unscored = [i for i in range(window) if rerank_scores[i] is None]
    ranked = [RankedHit(i, float(rerank_scores[i]), True) for i in scored]  # type: ignore[arg-type]
    ranked += [RankedHit(i, None, False) for i in (*unscored, *range(window, n_hits))]
    return ranked
