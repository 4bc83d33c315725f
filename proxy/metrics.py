"""Prometheus metrics of the HTTP side, recorded where each decision is made."""
import functools

from prometheus_client import Counter, Histogram

REQUESTS = Counter("rerank_proxy_requests_total", "requests by route kind", ["kind"])
SEARCHES = Counter(
    "rerank_proxy_searches_total", "searches by outcome (reranked, skipped, fallback, partial)",
    ["outcome", "reason", "variant"],
)
VARIANTS = Counter("rerank_proxy_variant_total", "searches by A/B variant and how it was chosen", ["variant", "how"])
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
    counter(SEARCHES, outcome.strip(), reason, variant).inc()


@functools.lru_cache(maxsize=1024)
def counter(metric: Counter, *labels: str) -> Counter:
    """A labelled counter child, looked up once: `labels()` costs more than the increment it is for."""
    return metric.labels(*labels)
