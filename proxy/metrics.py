"""Prometheus metrics of the HTTP side, recorded where each decision is made."""
from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .experiment_stats import ExperimentSummary


class Tally(Collector):
    """A labelled counter bumped on every request: a dict entry per label set, read when scraped. A prometheus
    Counter child takes a lock per increment, which costs more than the relay's own work for a request; this is
    only ever bumped from the event loop's thread."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]):
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self.labels = list(labels)
        self.counts: dict[tuple[str, ...], int] = {}
        REGISTRY.register(self)

    def inc(self, *labels: str) -> None:
        self.counts[labels] = self.counts.get(labels, 0) + 1

    def add(self, amount: int, *labels: str) -> None:
        self.counts[labels] = self.counts.get(labels, 0) + amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, count in list(self.counts.items()):
            family.add_metric(labels, count)
        yield family


REQUESTS = Tally("rerank_proxy_requests_total", "requests by route kind", ["kind"])
SEARCHES = Tally(
    "rerank_proxy_searches_total", "searches by outcome (reranked, skipped, fallback, partial, refused)",
    ["outcome", "reason", "variant", "index"],
)
VARIANTS = Tally("rerank_proxy_variant_total", "searches by A/B variant and how it was chosen", ["variant", "how"])
FALLBACKS = Counter("rerank_proxy_fallbacks_total", "searches served in the cluster's order",
                    ["model", "reason", "index"])
UPSTREAM_ERRORS = Counter(
    "rerank_proxy_upstream_errors_total", "requests answered by the proxy because the cluster could not be asked "
    "or did not answer (unreachable, timeout, broken)", ["kind"],
)
RERANK_SECONDS = Histogram(
    "rerank_proxy_rerank_seconds", "time the proxy added to a reranked search (text building, model, rewriting)",
    ["index"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EVENTS = Tally(
    "rerank_proxy_events_total", "click events by type (a credited type, or other) and what became of them",
    ["type", "result"],
)
EXPERIMENT_EXCLUDED = Tally(
    "rerank_proxy_experiment_excluded_total", "searches of an experiment served by side a alone, not counted",
    ["experiment", "reason"],
)


class ExperimentGauges(Collector):
    """Each experiment's tally and verdict, read from the serving proxy's book when scraped (gauges: a later click
    can turn a win into a tie)."""

    def __init__(self) -> None:
        self.read: Callable[[], Mapping[str, ExperimentSummary]] = dict
        REGISTRY.register(self)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        summaries = self.read()
        prefix = "rerank_proxy_experiment_"
        searches = GaugeMetricFamily(prefix + "searches", "searches served interleaved", labels=["experiment"])
        clicked = GaugeMetricFamily(prefix + "clicked_searches", "served searches with a credited event",
                                    labels=["experiment"])
        outcomes = GaugeMetricFamily(prefix + "outcomes", "clicked searches by which side the clicks preferred",
                                     labels=["experiment", "outcome"])
        p_value = GaugeMetricFamily(prefix + "p_value", "two-sided sign test of a's wins against b's",
                                    labels=["experiment"])
        share = GaugeMetricFamily(prefix + "a_win_share", "posterior mean share of decisive searches a wins",
                                  labels=["experiment"])
        for name, summary in summaries.items():
            searches.add_metric([name], summary.searches)
            clicked.add_metric([name], summary.clicked_searches)
            for outcome, count in (("a", summary.wins_a), ("b", summary.wins_b), ("tie", summary.ties)):
                outcomes.add_metric([name, outcome], count)
            p_value.add_metric([name], summary.p_value)
            share.add_metric([name], summary.a_win_share.mean)
        yield from (searches, clicked, outcomes, p_value, share)


EXPERIMENTS = ExperimentGauges()
CAPTURED = Tally("rerank_proxy_capture_records_total", "capture records by type and result (queued, dropped, "
                 "failed)", ["type", "result"])
SHADOWS = Tally("rerank_proxy_shadow_searches_total", "shadow scorings by model and result (scored, "
                "dropped-busy, dropped-full, failed)", ["model", "result"])
SHADOW_SECONDS = Histogram(
    "rerank_proxy_shadow_seconds", "a shadow model's time per search", ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SHADOW_AGREEMENT = Histogram(
    "rerank_proxy_shadow_agreement", "agreement of the shadow's order with the served one (overlap_at_10, "
    "kendall_tau, rbo)", ["model", "measure"],
    buckets=(-0.5, 0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
RELOADS = Counter("rerank_proxy_config_reloads_total", "config reloads", ["result"])
API_REQUESTS = Tally(
    "rerank_proxy_api_requests_total", "rerank API calls by route (cohere-v1, cohere-v2, tei), model and status",
    ["route", "model", "status"],
)
API_DOCUMENTS = Tally("rerank_proxy_api_documents_total", "documents scored through the rerank API",
                      ["route", "model"])
API_SECONDS = Histogram(
    "rerank_proxy_api_seconds", "a rerank API call's time, from its body read to its answer", ["route", "model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


ACCESS_LOG_DROPPED = Tally("rerank_proxy_access_log_dropped_total", "access-log lines dropped: the writer thread "
                           "was that many lines behind", [])

OTHER_INDEX = "_other"  # the `index` label of an index the allow-list does not name
ALL_INDICES = "_all"  # what a search that names no index is matched as


@functools.lru_cache(maxsize=4096)
@functools.lru_cache(maxsize=4096)  # asked on every search, of the few expressions clients send (bounded)
def index_label(allowed: tuple[str, ...], expression: str | None) -> str:
    """The `index` label of a search of `expression` (as the client named it: `a`, `a,b`, `logs-*`, None for all):
    the first `metrics.index_labels` entry that every named index matches (an exact name, or a pattern, which then is
    the label: the label's values are the allow-list's), else `_other`. Bounded, so per-index series cannot grow
    with the indices a cluster has."""
    names = [name for name in (expression or "").split(",") if name] or [ALL_INDICES]
    for entry in allowed:
        if all(name == entry or fnmatch.fnmatchcase(name, entry) for name in names):
            return entry
    return OTHER_INDEX


@functools.lru_cache(maxsize=1024)  # asked on every search, of a few dozen statuses
def split_status(status: str) -> tuple[str, str]:
    """An `X-Rerank-Status` entry as (outcome, reason): `skipped; reason=sort` is (skipped, sort), `partial;
    reranked=7` is (partial, "")."""
    outcome, _, rest = status.partition(";")
    outcome = outcome.strip()
    reason = rest.strip().removeprefix("reason=") if outcome in ("skipped", "fallback", "refused") else ""
    return outcome, reason


def record_search(status: str, variant: str, index: str = OTHER_INDEX) -> None:
    """`index`: the search's label (`index_label`)."""
    SEARCHES.inc(*split_status(status), variant, index)


@functools.lru_cache(maxsize=1024)
def counter(metric: Counter, *labels: str) -> Counter:
    """A labelled counter child, looked up once: `labels()` costs more than the increment it is for."""
    return metric.labels(*labels)
