"""One search, as a straight line of steps:
resolve -> decide -> rewrite request -> (cluster) -> score -> rewrite response.

`plan_search` / `plan_template` do everything before the cluster is asked and `finish` everything after; both are
shared by `_search`, each `_msearch` item and the template variants. Nothing here speaks HTTP.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rerank.chunking import score_chunked
from rerank.engine import CircuitOpen, ModelLoading, ModelUnavailable, Overloaded, ScoreTiming, ScoringEngine
from rerank.ranking import RankedHit, rank, scored_prefix
from rerank.text import build_document_text

from . import metrics
from .config import Config, RerankSettings
from .decide import (
    NO_GATE,
    Decision,
    Page,
    decide,
    load_detector,
    needs_detector,
    requested_page,
    served_languages,
    template_order_ruled_out,
)
from .query_text import extract_query_text
from .request_rewrite import ClientView, rewrite_search
from .resolve import IndexResolver, ResultWindows
from .response_rewrite import apply_client_filter_path, rewrite_hits
from .variants import apply_variant
from .view import SourceFilter


@dataclass(frozen=True)
class RequestOptions:
    """What the client asked of the proxy in `X-Rerank-*` headers."""

    force: str | None  # on | off
    variant: str
    query_override: str | None
    explain: bool


@dataclass(frozen=True, kw_only=True)
class Skip:
    """A search left to the cluster: the client's request goes as it came, the answer comes back as it is."""

    reason: str
    variant: str

    @property
    def decision(self) -> Decision:
        return Decision(False, self.reason)

    @property
    def skip_status(self) -> str:
        return f"skipped; reason={self.reason}"


@dataclass(frozen=True, kw_only=True)
class Rerank:
    """A search the proxy reranks: what to ask the cluster instead, and how to score and rewrite its answer."""

    variant: str
    settings: RerankSettings
    model: str
    query: str
    upstream_body: dict[str, Any]
    upstream_params: list[tuple[str, str]]
    view: ClientView  # the page and `_source`/`filter_path` the client asked for
    window: int | None  # None: every returned hit (templates whose size the proxy cannot set)
    index_label: str = metrics.OTHER_INDEX  # the search's `index` label on the metrics

    decision: ClassVar[Decision] = Decision(True)


Plan = Skip | Rerank


def _skip(decision: Decision, variant: str) -> Skip:
    return Skip(reason=decision.reason or "unknown", variant=variant)


@dataclass(frozen=True)
class Outcome:
    response: Any
    status: str
    took_ms: float
    scored: Scored | None = None  # None: nothing was scored (an `_msearch` error item)


async def _settings(
    config: Config, resolver: IndexResolver, index: str | None, options: RequestOptions
) -> tuple[RerankSettings | None, str]:
    """The effective settings (None: the indices disagree), and what to call it if they switch reranking off."""
    resolution = await resolver.resolve(index)
    if resolution.settings is None:
        return None, "mixed-index-config"
    settings = apply_variant(config, resolution.settings, options.variant)
    varied = options.variant in config.variants and "enabled" in config.variants[options.variant].model_fields_set
    return settings, "disabled" if resolution.explicit or varied else "not-configured"


async def _languages(
    config: Config, settings: RerankSettings | None, options: RequestOptions, query: str | None
) -> Sequence[str]:
    """The languages the search's model serves, for decide's language gate (NO_GATE where the gate cannot matter).
    The detector's first load runs in a thread, so the event loop never waits for it."""
    if settings is None or not settings.enabled or options.force == "on" or not query:
        return NO_GATE
    languages = served_languages(settings, config.models[config.model_name(settings)].languages)
    if needs_detector(languages):
        await asyncio.to_thread(load_detector)
    return languages


async def _within_result_window(
    windows: ResultWindows | None, index: str | None, page: Page, settings: RerankSettings
) -> RerankSettings | Decision:
    """The settings with the rerank window cut to what the searched indices let one search fetch
    (`index.max_result_window`); or, for a page past that limit, the decision to let the cluster refuse it."""
    limit = await windows.limit(index) if windows is not None else None
    if limit is None:
        return settings
    if page.from_ + page.size > limit:
        return Decision(False, "over-max-result-window")
    return settings.model_copy(update={"window": limit}) if settings.window > limit else settings


async def plan_search(
    config: Config,
    resolver: IndexResolver,
    index: str | None,
    body: Mapping[str, Any] | None,
    params: Sequence[tuple[str, str]],
    options: RequestOptions,
    result_windows: ResultWindows | None = None,
) -> Plan:
    """`result_windows`: where the searched indices' `index.max_result_window` is looked up (None: not at all)."""
    if options.force == "off":  # before resolving: no alias lookup for a search that is relayed as is
        return Skip(reason="header-off", variant=options.variant)
    flat = dict(params)
    settings, off_reason = await _settings(config, resolver, index, options)
    query = options.query_override or (
        extract_query_text(body, flat, query_path=settings.query_path) if settings else None
    )
    languages = await _languages(config, settings, options, query)
    decision = decide(
        body, flat, settings, force=options.force, query_text=query, off_reason=off_reason, languages=languages
    )
    if not decision.rerank:
        return _skip(decision, options.variant)
    assert settings is not None and query, "decide() reranks only with settings and a query text"
    page = requested_page(body or {}, flat)
    assert page is not None, "decide() rejects searches without a valid page"
    within = await _within_result_window(result_windows, index, page, settings)
    if isinstance(within, Decision):
        return _skip(within, options.variant)
    settings = within
    try:
        upstream, view = rewrite_search(body, params, settings.window, settings.text.source_fields())
    except ValueError:
        return Skip(reason="bad-request", variant=options.variant)
    return Rerank(
        variant=options.variant, settings=settings, model=config.model_name(settings), query=query,
        upstream_body=upstream.body, upstream_params=upstream.params, view=view, window=settings.window,
        index_label=_index_label(config, index),
    )


def _index_label(config: Config, index: str | None) -> str:
    return metrics.index_label(tuple(config.metrics.index_labels), index)


def _int(value: Any, default: int) -> int | None:
    try:
        number = int(value) if value is not None else default
    except (TypeError, ValueError, OverflowError):
        return None
    return number if 0 <= number <= 2**31 - 1 else None  # a Java int, as the template's `from`/`size` become


async def plan_template(
    config: Config,
    resolver: IndexResolver,
    index: str | None,
    body: Mapping[str, Any] | None,
    params: Sequence[tuple[str, str]],
    options: RequestOptions,
    result_windows: ResultWindows | None = None,
) -> Plan:
    """Search templates hide the DSL; the query text and the page come from the template params named in config."""
    if options.force == "off":
        return Skip(reason="header-off", variant=options.variant)
    # An inline template's own options (a sort, a rescore...) rule reranking out as a search's would; a stored one
    # (`id`) cannot be read here: its index's rule (`template_params`) is the operator's word that it ranks by score.
    ruled_out = template_order_ruled_out(body.get("source")) if isinstance(body, Mapping) else None
    if ruled_out is not None:
        return Skip(reason=ruled_out, variant=options.variant)
    flat = dict(params)
    settings, off_reason = await _settings(config, resolver, index, options)
    tparams = body.get("params") if isinstance(body, Mapping) else None
    tparams = tparams if isinstance(tparams, Mapping) else {}
    names = settings.template_params if settings else None
    query = options.query_override or (tparams.get(names.query) if names else None)
    query = query if isinstance(query, str) and query.strip() else None
    languages = await _languages(config, settings, options, query)
    decision = decide(
        None, flat, settings, force=options.force, query_text=query, off_reason=off_reason, languages=languages
    )
    if not decision.rerank:
        return _skip(decision, options.variant)
    assert settings is not None and names is not None and body is not None and query
    from_, size = _int(tparams.get(names.from_), 0), _int(tparams.get(names.size), 10)
    if from_ is None or size is None:
        return Skip(reason="bad-page", variant=options.variant)
    if names.size in tparams:  # the page is the proxy's to set: within the indices' max_result_window
        within = await _within_result_window(result_windows, index, Page(from_, size), settings)
        if isinstance(within, Decision):
            return _skip(within, options.variant)
        settings = within
    if from_ >= settings.window:
        return Skip(reason="page-past-window", variant=options.variant)
    window = settings.window if names.size in tparams else None
    new_params = dict(tparams)
    if window is not None:
        new_params[names.from_] = 0
        new_params[names.size] = max(window, from_ + size)
    else:
        from_, size = 0, 10_000  # the template decides the page; rerank what it returns
    view = ClientView(Page(from_, size), SourceFilter(), False, flat.get("filter_path"))
    kept = [(k, v) for k, v in params if k != "filter_path"]
    return Rerank(
        variant=options.variant, settings=settings, model=config.model_name(settings), query=query,
        upstream_body={**body, "params": new_params}, upstream_params=kept, view=view, window=window,
        index_label=_index_label(config, index),
    )


_FALLBACK_REASONS: dict[type, str] = {
    ModelUnavailable: "model-unavailable",
    ModelLoading: "model-loading",
    CircuitOpen: "circuit-open",
    Overloaded: "overloaded",
    asyncio.TimeoutError: "deadline",
}


def cluster_hits(response: Any) -> list[dict[str, Any]] | None:
    hits = response.get("hits", {}).get("hits") if isinstance(response, dict) else None
    return hits if isinstance(hits, list) else None


@dataclass(frozen=True)
class Scored:
    """The window of one search as a model ordered it: every hit's new place and how scoring went, with what the
    model read (kept for shadow scoring and capture: the response rewrite changes the hits in place)."""

    ranking: list[RankedHit]
    status: str
    took_ms: float
    best_chunks: Sequence[int | None] | None = None
    texts: Sequence[str] = ()  # the window's texts, as the model read them
    cluster_scores: Sequence[float | None] = ()  # every hit's `_score` from the cluster
    keys: Sequence[tuple[Any, Any]] = ()  # the window's (`_index`, `_id`)s
    started: float = 0.0  # time.perf_counter() when scoring began (it ended `took_ms` later)
    timing: ScoreTiming | None = None  # the engine's account: queue wait and model time


def cluster_order(hits: Sequence[Any], status: str) -> Scored:
    return Scored([RankedHit(i, None, None) for i in range(len(hits))], status, 0.0)


async def score_hits(plan: Rerank, hits: list[dict[str, Any]], engine: ScoringEngine) -> Scored:
    """The window scored by the plan's model and fused with the cluster's scores; on any model trouble, the
    cluster's order with the reason in its status."""
    window = len(hits) if plan.window is None else min(plan.window, len(hits))
    texts = [build_document_text(hit.get("_source"), plan.settings.text) for hit in hits[:window]]
    started = time.perf_counter()
    timing = ScoreTiming()
    scores: Sequence[float | None]
    best_chunks: Sequence[int | None] | None = None
    try:
        scores, best_chunks = await score_chunked(
            lambda docs: engine.score(plan.model, plan.query, docs, plan.settings.timeout_ms / 1000, timing),
            texts, plan.settings.chunking,
        )
        reranked = scored_prefix(scores)  # the top hits the new order covers; the rest keep the cluster's
        if reranked == len(scores):
            status = "reranked"
        elif reranked:
            status = f"partial; reranked={reranked}"
        else:  # scores came, but not for the top hit: nothing is reordered
            metrics.FALLBACKS.labels(plan.model, "deadline", plan.index_label).inc()
            status = "fallback; reason=deadline"
    except Exception as err:  # never fail a search because of the model
        reason = _FALLBACK_REASONS.get(type(err), "model-error")
        metrics.FALLBACKS.labels(plan.model, reason, plan.index_label).inc()
        scores, status = [None] * window, f"fallback; reason={reason}"
    took_ms = (time.perf_counter() - started) * 1000
    cluster_scores = [hit.get("_score") for hit in hits]
    ranking = rank(cluster_scores, scores, plan.settings.fusion)
    keys = [(hit.get("_index"), hit.get("_id")) for hit in hits[:window]]
    return Scored(ranking, status, took_ms, best_chunks, texts, cluster_scores, keys, started, timing)


async def finish(
    plan: Rerank, response: Any, engine: ScoringEngine, options: RequestOptions, *, opensearch: bool
) -> Outcome:
    """Scores the window and rewrites the cluster's response; on any model trouble, the cluster's order.
    `opensearch`: the cluster's flavour, whose `_source`/`filter_path` shaping differs in detail."""
    hits = cluster_hits(response)
    if hits is None:  # an `_msearch` error item: returned as sent (the cluster never filters errors either)
        return Outcome(response, "skipped; reason=no-hits", 0.0)
    scored = await score_hits(plan, hits, engine)
    rewritten = rewrite_hits(
        response, plan.view, scored.ranking, extra_took_ms=round(scored.took_ms), explain=options.explain,
        opensearch=opensearch, best_chunks=scored.best_chunks,
    )
    served = apply_client_filter_path(rewritten, plan.view, opensearch=opensearch)
    return Outcome(served, scored.status, scored.took_ms, scored)
