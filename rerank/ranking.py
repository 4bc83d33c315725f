"""From scores to a new order of the fetched hits.

The window (the first `len(model_scores)` hits) is re-ordered by the fused score; hits the model did not score (a
partial result) follow the scored ones in the cluster's order, and hits past the window keep the cluster's order after
them, so consecutive pages never repeat or drop a hit. The fused score becomes `_score`, so the order and `_score`
always agree.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Fusion(BaseModel):
    """How the model's score and the cluster's combine: `replace` (model only), `linear` (weighted sum of the two,
    each min-max normalised over the window) or `rrf` (reciprocal rank fusion)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["replace", "linear", "rrf"] = "linear"
    weight: float = Field(0.5, ge=0, le=1, description="linear: the model's share; the cluster gets 1 - weight")
    k: int = Field(60, gt=0, description="rrf: the rank constant")


@dataclass(frozen=True)
class RankedHit:
    position: int  # index into the cluster's hits
    score: float | None  # the new `_score`; None keeps the cluster's
    model_score: float | None  # the model's own score, before fusion


def _min_max(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    return [(v - low) / (high - low) if high > low else 1.0 for v in values]


def _fuse(cluster: Sequence[float | None], model: Sequence[float], fusion: Fusion) -> list[float]:
    if not model:
        return []
    if fusion.mode == "replace" or any(c is None for c in cluster):  # no cluster scores to fuse with (e.g. sorted)
        return list(model)
    if fusion.mode == "linear":
        w = fusion.weight
        return [w * m + (1 - w) * c for m, c in zip(_min_max(model), _min_max(cluster))]  # type: ignore[arg-type]
    by_model = sorted(range(len(model)), key=lambda i: -model[i])
    model_rank = {i: r for r, i in enumerate(by_model, 1)}
    return [1 / (fusion.k + i + 1) + 1 / (fusion.k + model_rank[i]) for i in range(len(model))]


def rank(
    cluster_scores: Sequence[float | None], model_scores: Sequence[float | None], fusion: Fusion = Fusion()
) -> list[RankedHit]:
    n_hits = len(cluster_scores)
    window = min(len(model_scores), n_hits)
    scored = [i for i in range(window) if model_scores[i] is not None]
    fused = dict(zip(scored, _fuse([cluster_scores[i] for i in scored], [model_scores[i] for i in scored], fusion)))  # type: ignore[misc]
    # A stable sort keeps the cluster's order between equal scores.
    scored.sort(key=lambda i: -fused[i])
    ranked = [RankedHit(i, fused[i], model_scores[i]) for i in scored]
    unscored = [i for i in range(window) if model_scores[i] is None]
    ranked += [RankedHit(i, None, None) for i in (*unscored, *range(window, n_hits))]
    return ranked
