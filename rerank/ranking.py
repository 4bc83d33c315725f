"""From scores to a new order of the fetched hits.

Only the scored prefix of the window is reordered: hits 0..K-1, where K is the number of hits before the first one
the model did not score (`scored_prefix`). With every hit of the window scored, K is the whole window. A partial
result (a deadline or overload cut scoring short; the engine scores each search in the cluster's rank order, so
what it scored is the top of the window) reorders those K and serves every hit from the first unscored one on in
the cluster's order after them, scored or not: a hit scored beyond a gap (a cached score, say) is not promoted past
hits the model never saw. So a partial result is exactly what a full rerank of a window of K would serve, never a
low-ranked scored hit above a high-ranked unscored one, and it tends to the cluster's order as K falls (K = 0 is the
cluster's order) and to the full rerank as K grows.

The fused score becomes `_score`, and over the window the order and `_score` always agree (non-increasing). The
prefix is fused among itself (`Fusion`: min-max normalisation over the K hits for `linear`, cluster ranks 1..K for
`rrf`). A hit after the prefix, still in the window, is fused as a hit the model ranked last:
- `linear`: the model's share at its floor (0) plus the cluster's share on the prefix's normalisation scale, so 0 at
  the prefix's lowest cluster score and below 0 further down (the cluster's score range of the whole window stands
  in when the prefix's is empty), in the cluster's order below every prefix hit;
- `rrf`: its cluster rank's term alone, `1 / (k + rank)`, which is below every prefix hit's two terms;
- `replace` (and cluster hits without `_score`): the prefix's lowest score, a tie that keeps the cluster's order.
Whatever the cluster's own scores look like, each such score is capped at the one before it, so `_score` never
rises down the window. Hits past the window keep the cluster's `_score` (RankedHit.score None) and order after it,
so consecutive pages never repeat or drop a hit; with nothing scored (K = 0) every hit keeps the cluster's `_score`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Fusion(BaseModel):
    """How the model's score and the cluster's combine: `replace` (model only), `linear` (weighted sum of the two,
    each min-max normalised over the reranked hits) or `rrf` (reciprocal rank fusion)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["replace", "linear", "rrf"] = "linear"
    weight: float = Field(0.5, ge=0, le=1, description="linear: the model's share; the cluster gets 1 - weight")
    k: int = Field(60, gt=0, description="rrf: the rank constant")


LINEAR = Fusion()  # the default: half the model's score, half the cluster's


@dataclass(frozen=True)
class RankedHit:
    position: int  # index into the cluster's hits
    score: float | None  # the new `_score`; None keeps the cluster's
    model_score: float | None  # the model's score the order used, before fusion; None for a hit not reranked


def scored_prefix(model_scores: Sequence[float | None]) -> int:
    """K: how many hits from the top the model scored without a gap, the hits `rank` reorders (`partial;
    reranked=K`)."""
    for k, score in enumerate(model_scores):
        if score is None:
            return k
    return len(model_scores)


def _min_max(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    return [(v - low) / (high - low) if high > low else 1.0 for v in values]


def _model_only(cluster: Sequence[float | None], fusion: Fusion) -> bool:
    return fusion.mode == "replace" or any(c is None for c in cluster)  # no cluster scores to fuse with


def _fuse(cluster: Sequence[float | None], model: Sequence[float], fusion: Fusion) -> list[float]:
    if not model:
        return []
    if _model_only(cluster, fusion):
        return list(model)
    if fusion.mode == "linear":
        w = fusion.weight
        return [w * m + (1 - w) * c for m, c in zip(_min_max(model), _min_max(cluster))]  # type: ignore[arg-type]
    by_model = sorted(range(len(model)), key=lambda i: -model[i])
    model_rank = {i: r for r, i in enumerate(by_model, 1)}
    return [1 / (fusion.k + i + 1) + 1 / (fusion.k + model_rank[i]) for i in range(len(model))]


def _after_prefix(
    cluster: Sequence[float | None], k: int, window: int, lowest: float, fusion: Fusion
) -> list[float]:
    """Scores of the window's hits k..window-1 (not reranked), fused as hits the model ranked last, each at most
    the one before it (the first at most `lowest`, the prefix's lowest fused score)."""
    tail = cluster[k:window]
    if _model_only([*cluster[:k], *tail], fusion):
        raw = [lowest] * len(tail)
    elif fusion.mode == "rrf":
        raw = [1 / (fusion.k + j + 1) for j in range(k, window)]
    else:
        prefix = [c for c in cluster[:k] if c is not None]
        low, high = min(prefix), max(prefix)
        span = high - low
        if span <= 0:
            span = high - min(c for c in cluster[:window] if c is not None)
        span = span if span > 0 else 1.0
        raw = [(1 - fusion.weight) * (c - low) / span for c in tail]  # type: ignore[operator]
    capped, ceiling = [], lowest
    for value in raw:
        ceiling = min(value, ceiling)
        capped.append(ceiling)
    return capped


def rank(
    cluster_scores: Sequence[float | None], model_scores: Sequence[float | None], fusion: Fusion = LINEAR
) -> list[RankedHit]:
    """The cluster's hits in their new order (see the module docstring): the scored prefix of the window reordered
    by fused score, the rest of the window and the hits past it in the cluster's order."""
    n_hits = len(cluster_scores)
    window = min(len(model_scores), n_hits)
    k = scored_prefix(model_scores[:window])
    if k == 0:
        return [RankedHit(i, None, None) for i in range(n_hits)]
    model = [s for s in model_scores[:k] if s is not None]
    fused = _fuse(cluster_scores[:k], model, fusion)
    # A stable sort keeps the cluster's order between equal scores.
    order = sorted(range(k), key=lambda i: -fused[i])
    ranked = [RankedHit(i, fused[i], model[i]) for i in order]
    tail = _after_prefix(cluster_scores, k, window, min(fused), fusion)
    ranked += [RankedHit(i, score, None) for i, score in zip(range(k, window), tail)]
    ranked += [RankedHit(i, None, None) for i in range(window, n_hits)]
    return ranked
