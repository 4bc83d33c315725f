"""Prometheus metrics of the scoring side, recorded where each decision is made."""
from prometheus_client import Counter, Gauge, Histogram

MODEL_UP = Gauge("rerank_model_up", "1 when the model is loaded and serving", ["model"])
PAIRS = Counter("rerank_model_pairs_total", "(query, document) pairs scored", ["model"])
BATCH_SECONDS = Histogram(
    "rerank_model_batch_seconds", "model time per batch", ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_WAIT = Histogram(
    "rerank_queue_wait_seconds", "time a search waited for the model", ["model"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
REJECTED = Counter("rerank_rejected_total", "searches not scored, by reason", ["model", "reason"])
MODEL_ERRORS = Counter("rerank_model_errors_total", "model calls that raised", ["model"])
