"""The client's response: the reranked order, the client's page and the client's view of each hit."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank.ranking import RankedHit

from .request_rewrite import ClientView
from .view import apply_filter_path, filter_source


def _restore_source(hit: dict[str, Any], view: ClientView, opensearch: bool) -> None:
    if not view.source_widened or "_source" not in hit:
        return
    if not view.source.enabled:
        del hit["_source"]
    else:
        hit["_source"] = filter_source(hit["_source"], view.source, opensearch=opensearch)


def rewrite_hits(
    response: dict[str, Any],
    view: ClientView,
    ranking: Sequence[RankedHit],
    *,
    extra_took_ms: int,
    explain: bool,
    opensearch: bool = False,
    best_chunks: Sequence[int | None] | None = None,
) -> dict[str, Any]:
    """Reorders `hits.hits` (a shallow copy; the cluster's dicts are updated in place) and slices the client's page."""
    hits_section = response.get("hits")
    if not isinstance(hits_section, dict) or not isinstance(hits_section.get("hits"), list):
        return response
    hits: list[dict[str, Any]] = hits_section["hits"]
    ordered = []
    for hit_rank in ranking:
        hit = hits[hit_rank.position]
        cluster_score = hit.get("_score")
        if hit_rank.score is not None:
            hit["_score"] = hit_rank.score
        if explain:
            fields = hit.setdefault("fields", {})
            fields["_rerank.cluster_score"] = [cluster_score]
            fields["_rerank.cluster_rank"] = [hit_rank.position + 1]
            fields["_rerank.model_score"] = [hit_rank.model_score]
            fields["_rerank.score"] = [hit_rank.score]
            if best_chunks is not None and hit_rank.position < len(best_chunks):
                fields["_rerank.chunk"] = [best_chunks[hit_rank.position]]
        ordered.append(hit)
    reranked_scores = [r.score for r in ranking if r.score is not None]
    if reranked_scores:
        hits_section["max_score"] = max(reranked_scores)
    page = ordered[view.page.from_ : view.page.from_ + view.page.size]
    for hit in page:
        _restore_source(hit, view, opensearch)
    hits_section["hits"] = page
    if isinstance(response.get("took"), int):
        response["took"] += extra_took_ms
    return response


def apply_client_filter_path(response: Any, view: ClientView, *, opensearch: bool = False) -> Any:
    return apply_filter_path(response, view.filter_path, opensearch=opensearch) if view.filter_path else response
