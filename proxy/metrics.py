"""Prometheus metrics of the HTTP side, recorded where each decision is made."""
from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


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

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, count in list(self.counts.items()):
            family.add_metric(labels, count)
        yield family


REQUESTS = Tally("rerank_proxy_requests_total", "requests by route kind", ["kind"])
SEARCHES = Tally(
    "rerank_proxy_searches_total", "searches by outcome (reranked, skipped, fallback, partial)",
    ["outcome", "reason", "variant"],
)
VARIANTS = Tally("rerank_proxy_variant_total", "searches by A/B variant and how it was chosen", ["variant", "how"])
FALLBACKS = Counter("rerank_proxy_fallbacks_total", "searches served in the cluster's order", ["model", "reason"])
UPSTREAM_ERRORS = Counter(
    "rerank_proxy_upstream_errors_total", "requests answered by the proxy because the cluster could not be asked "
    "or did not answer (unreachable, timeout, broken)", ["kind"],
)
RERANK_SECONDS = Histogram(
    "rerank_proxy_rerank_seconds", "time the proxy added to a reranked search (text building, model, rewriting)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RELOADS = Counter("rerank_proxy_config_reloads_total", "config reloads", ["result"])


def record_search(status: str, variant: str) -> None:
    outcome, _, rest = status.partition(";")
    reason = rest.strip().removeprefix("reason=") if outcome in ("skipped", "fallback") else ""
    SEARCHES.inc(outcome.strip(), reason, variant)


@functools.lru_cache(maxsize=1024)
def counter(metric: Counter, *labels: str) -> Counter:
    """A labelled counter child, looked up once: `labels()` costs more than the increment it is for."""
    return metric.labels(*labels)
