"""Prometheus metrics of the scoring side, recorded where each decision is made."""
from prometheus_client import Counter, Gauge, Histogram

MODEL_UP = Gauge("rerank_model_up", "1 when the model is loaded and serving", ["model"])
MODEL_LOAD_FAILURES = Counter(
    "rerank_model_load_failures_total", "failed attempts to load (or warm up) the model; each is retried", ["model"]
)
CIRCUIT_STATE = Gauge(
    "rerank_model_circuit_state", "the model's circuit breaker: 0 closed, 1 half-open, 2 open", ["model"]
)
CIRCUIT_OPENED = Counter(
    "rerank_model_circuit_opened_total",
    "times the model's circuit breaker opened (failed searches, or a failed trial)",
    ["model"],
)
PAIRS = Counter("rerank_model_pairs_total", "(query, document) pairs scored by the model", ["model"])
BATCH_SECONDS = Histogram(
    "rerank_model_batch_seconds", "model time per micro-batch", ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_WAIT = Histogram(
    "rerank_queue_wait_seconds", "time a search waited before its first micro-batch", ["model"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
REJECTED = Counter("rerank_rejected_total", "searches refused before queueing, by reason", ["model", "reason"])
MODEL_ERRORS = Counter("rerank_model_errors_total", "model calls that raised", ["model"])

# The batching engine (rerank/engine.py). Token figures are what it cuts micro-batches by: the exact lengths of a
# local backend's encoded pairs, else an estimate from count_tokens (query + document + 3 special tokens).
QUEUE_DEPTH = Gauge("rerank_queue_searches", "searches queued or being scored", ["model"])
BATCH_PAIRS = Histogram(
    "rerank_batch_pairs", "pairs per micro-batch (one model call)", ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
BATCH_FILL = Histogram(
    "rerank_batch_fill_ratio", "real tokens / padded tokens (longest pair x pairs) per micro-batch", ["model"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
)
BATCH_TOKENS = Counter(
    "rerank_batch_tokens_total", "tokens sent to the model, kind=real or padding (padding waste)", ["model", "kind"]
)
SCORE_CACHE = Counter("rerank_score_cache_total", "pair lookups in the score cache, result=hit or miss",
                      ["model", "result"])
DROPPED = Counter(
    "rerank_pairs_dropped_total",
    "queued pairs never scored: reason=deadline (passed), abandoned (caller left) or error (search failed)",
    ["model", "reason"],
)
