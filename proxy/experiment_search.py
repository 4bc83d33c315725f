"""A search served to an interleaved experiment, as a straight line of steps like `search.py`'s:
plan both sides -> one upstream request -> score both sides -> interleave -> rewrite response.

Each side is planned as the search would be for its variant. A side that would leave the search in the cluster's
order (reranking off for it, its language gate, a page past its window) ranks by the cluster's order: that is what
it would serve. The cluster is asked once, for the larger window and the `_source` both sides read; each side is
scored by its own model through the shared engine.

A search is interleaved only when both sides ranked it as they meant to. When a model falls back or is cut short,
the page is side `a`'s, as a search of variant `a` would get it, and the search is not counted (`excluded`): a
fallback's cluster order would otherwise be judged as that model's ranking.
"""
from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rerank.engine import ScoringEngine
from rerank.ranking import RankedHit

from .config import Config
from .experiments import DocKey
from .interleaving import Interleaving, Method, TeamDraftInterleaving, interleave
from .request_rewrite import ClientView, rewrite_search
from .response_rewrite import apply_client_filter_path, rewrite_hits
from .search import Plan, Rerank, Scored, Skip, cluster_hits, cluster_order, score_hits


@dataclass(frozen=True, kw_only=True)
class InterleavedPlan:
    experiment: str
    method: Method
    sides: tuple[Rerank | Skip, Rerank | Skip]  # a, b: a Skip ranks by the cluster's order
    upstream_body: dict[str, Any]
    upstream_params: list[tuple[str, str]]
    view: ClientView


@dataclass(frozen=True)
class InterleavedOutcome:
    response: Any
    status: str  # `interleaved`, or the status of side a's page when the search was excluded
    took_ms: float
    interleaving: Interleaving[DocKey] | None  # down to the end of the served page; None: excluded
    excluded: str | None = None  # why the search was not interleaved
    scored: Scored | None = None  # the served order of the window (the merged list), what was read, for capture
    sides: tuple[Scored, ...] = ()  # each side's own scoring of the window (its timings)


def _fields_read(plans: Sequence[Rerank]) -> list[str] | None:
    """The `_source` paths the sides read together; None when one needs the whole `_source`."""
    fields: list[str] = []
    for plan in plans:
        own = plan.settings.text.source_fields()
        if own is None:
            return None
        fields += own
    return list(dict.fromkeys(fields))


async def plan_interleaved(
    config: Config,
    experiment: str,
    body: Mapping[str, Any] | None,
    params: Sequence[tuple[str, str]],
    plan_side: Callable[[str], Awaitable[Plan]],
) -> InterleavedPlan | None:
    """`plan_side(variant)`: the search planned as that variant would plan it (`plan_search`). None: neither side
    reranks this search (the same request for both, so nothing to compare)."""
    definition = config.experiments[experiment]
    sides = await asyncio.gather(plan_side(definition.a), plan_side(definition.b))
    reranking = [plan for plan in sides if isinstance(plan, Rerank)]
    if not reranking:
        return None
    first = reranking[0]
    upstream_body, upstream_params, view = first.upstream_body, first.upstream_params, first.view
    if len(reranking) == 2 and (first.upstream_body, first.upstream_params) != (
        reranking[1].upstream_body, reranking[1].upstream_params
    ):
        window = max(plan.window or 0 for plan in reranking)
        upstream, view = rewrite_search(body, params, window, _fields_read(reranking))
        upstream_body, upstream_params = upstream.body, upstream.params
    return InterleavedPlan(
        experiment=experiment, method=Method(definition.method), sides=(sides[0], sides[1]),
        upstream_body=upstream_body, upstream_params=upstream_params, view=view,
    )


async def _ranked(side: Rerank | Skip, hits: list[dict[str, Any]], engine: ScoringEngine) -> Scored:
    if isinstance(side, Skip):
        return cluster_order(hits, side.skip_status)
    return await score_hits(side, hits, engine)


def _as_planned(scored: Scored) -> bool:
    return not scored.status.startswith(("fallback", "partial"))


def _team(interleaving: Interleaving[DocKey], i: int) -> str:
    if isinstance(interleaving, TeamDraftInterleaving):
        return interleaving.teams[i].value
    rank_a, rank_b = interleaving.ranks_a[i], interleaving.ranks_b[i]
    if rank_a == rank_b:
        return "both"
    return "a" if rank_b is None or (rank_a is not None and rank_a < rank_b) else "b"


async def finish_interleaved(
    plan: InterleavedPlan, response: Any, engine: ScoringEngine, *, seed: int, explain: bool, opensearch: bool
) -> InterleavedOutcome:
    """Scores the window for both sides, and serves the client's page of their merged list. The merged list's
    `_score` is 1 / its rank (from 1): the two sides' scores are on different scales, and `_score` must still fall
    down the page."""
    hits = cluster_hits(response)
    if hits is None:
        return InterleavedOutcome(response, "skipped; reason=no-hits", 0.0, None, "no-hits")
    scored_a, scored_b = await asyncio.gather(*(_ranked(side, hits, engine) for side in plan.sides))
    took_ms = max(scored_a.took_ms, scored_b.took_ms)
    keys: list[DocKey] = [(hit.get("_index"), hit.get("_id")) for hit in hits]
    excluded = None
    if not (_as_planned(scored_a) and _as_planned(scored_b)):
        excluded = "model-trouble"
    elif len(set(keys)) != len(keys):
        excluded = "repeated-ids"
    if excluded is not None:
        rewritten = rewrite_hits(response, plan.view, scored_a.ranking, extra_took_ms=round(took_ms),
                                 explain=explain, opensearch=opensearch, best_chunks=scored_a.best_chunks)
        served = apply_client_filter_path(rewritten, plan.view, opensearch=opensearch)
        return InterleavedOutcome(served, scored_a.status, took_ms, None, excluded, sides=(scored_a, scored_b))

    merged = interleave(plan.method, [keys[r.position] for r in scored_a.ranking],
                        [keys[r.position] for r in scored_b.ranking], seed=seed)
    position = {key: i for i, key in enumerate(keys)}
    ranking = [RankedHit(position[key], 1.0 / rank, None) for rank, key in enumerate(merged.docs, start=1)]
    rewritten = rewrite_hits(response, plan.view, ranking, extra_took_ms=round(took_ms), explain=explain,
                             opensearch=opensearch)
    page = plan.view.page
    if explain:
        model_scores = [{r.position: r.model_score for r in s.ranking} for s in (scored_a, scored_b)]
        for i, hit in enumerate(rewritten["hits"]["hits"], start=page.from_):
            fields = hit.setdefault("fields", {})
            fields["_rerank.team"] = [_team(merged, i)]
            fields["_rerank.model_score_a"] = [model_scores[0].get(ranking[i].position)]
            fields["_rerank.model_score_b"] = [model_scores[1].get(ranking[i].position)]
    served = apply_client_filter_path(rewritten, plan.view, opensearch=opensearch)
    read = scored_b if isinstance(plan.sides[1], Rerank) and scored_b.texts else scored_a
    window = dataclasses.replace(read, ranking=ranking, status="interleaved", took_ms=took_ms)
    return InterleavedOutcome(served, "interleaved", took_ms, merged.page(0, page.from_ + page.size), None, window,
                              (scored_a, scored_b))
