"""Capture: a sample of the reranked searches written to rotating JSONL files, for `rerank-proxy replay` and for
looking at what the model did on live traffic.

One line per record, each with `type`:
- `search`: time, search id, the index expression, the query text (or its SHA-256 with `hash_queries`), variant and
  experiment, status, the window (each hit's index, id and cluster score), the served order (window positions),
  the model's scores, timings, and with `documents: true` the texts the model read;
- `shadow`: a shadow model's order of a captured search's window, its agreement with the served one and its time;
- `event`: a click (or other) event on a captured search, as `POST /_rerank_proxy/events` took it.
Records of one search share its `search_id`: a reader joins them on it. Never headers, credentials or whole
`_source` documents.

Writing never blocks the event loop: records go into a bounded queue that one thread drains, serialising and writing
them; a record that finds the queue full is dropped and counted (`rerank_proxy_capture_records_total{result=
"dropped"}`). Files rotate at `max_bytes` (`capture.jsonl.1` is the newest old one, `backups` are kept).
"""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from cachetools import TTLCache

from . import metrics
from .config import Capture
from .search import Scored

log = logging.getLogger(__name__)

_STOP = object()


def hashed(query: str) -> str:
    return hashlib.sha256(query.encode("utf-8", "surrogatepass")).hexdigest()


def window_record(scored: Scored) -> dict[str, Any]:
    """The window as the cluster gave it, and a model's order of it (window positions, best first)."""
    window = len(scored.texts)
    model_scores: list[float | None] = [None] * window
    for hit in scored.ranking:
        if hit.position < window:
            model_scores[hit.position] = hit.model_score
    return {
        "window": [{"index": key[0], "id": key[1], "cluster_score": scored.cluster_scores[i]}
                   for i, key in enumerate(scored.keys)],
        "served": [hit.position for hit in scored.ranking if hit.position < window],
        "model_scores": model_scores,
    }


def search_record(scored: Scored, *, index: str | None, variant: str, model: str | None, took_ms: float,
                  experiment: str | None = None) -> dict[str, Any]:
    return {
        "index": index, "variant": variant, "experiment": experiment, "status": scored.status,
        "model": model, **window_record(scored),
        "timings": {"model_ms": round(scored.took_ms, 3), "total_ms": round(took_ms, 3)},
    }


class RotatingJsonl:
    """Appends lines to `path`, rotating at `max_bytes` into path.1 ... path.N."""

    def __init__(self, path: Path, max_bytes: int, backups: int):
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = path.open("ab")
        self._size = self._file.tell()

    def write(self, line: bytes) -> None:
        if self._size and self._size + len(line) > self.max_bytes:
            self._rotate()
        self._file.write(line)
        self._size += len(line)

    def flush(self) -> None:
        self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = self.path.open("ab")
        self._size = 0

    def close(self) -> None:
        self._file.close()


class CaptureLog:
    def __init__(self, options: Capture, rng: Callable[[], float] = random.random,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), writer: RotatingJsonl | None = None):
        self.options = options
        self.rng = rng
        self.clock = clock
        self._queue: queue.Queue[object] = queue.Queue(options.queue_records)
        self._captured: TTLCache[str, bool] = TTLCache(options.remember_searches, options.events_ttl_s)
        self._writer = writer or RotatingJsonl(options.path, options.max_bytes, options.backups)
        self._thread = threading.Thread(target=self._drain, name="rerank-proxy-capture", daemon=True)
        self._thread.start()

    def sampled(self, rate: float | None) -> bool:
        return self.rng() < (self.options.sample if rate is None else rate)

    def search(self, search_id: str, record: Mapping[str, Any], query: str, texts: Sequence[str]) -> None:
        """A sampled search (the caller drew it with `sampled`); `record` holds everything but the query and texts,
        which are added here as the options say."""
        self._captured[search_id] = True
        line: dict[str, Any] = {"type": "search", "time": self._now(), "search_id": search_id, **record}
        if self.options.hash_queries:
            line["query_sha256"] = hashed(query)
        else:
            line["query"] = query
        if self.options.documents:
            line["documents"] = list(texts)
        self._put(line)

    def captured(self, search_id: str) -> bool:
        return search_id in self._captured

    def shadow(self, search_id: str, record: Mapping[str, Any]) -> None:
        self._put({"type": "shadow", "time": self._now(), "search_id": search_id, **record})

    def event(self, search_id: str, doc_id: str, event_type: str, index: str | None) -> None:
        if search_id in self._captured:
            self._put({"type": "event", "time": self._now(), "search_id": search_id, "doc_id": doc_id,
                       "event": event_type, "index": index})

    def _now(self) -> str:
        return self.clock().isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _put(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            metrics.CAPTURED.inc(record["type"], "dropped")
            return
        metrics.CAPTURED.inc(record["type"], "queued")

    def _drain(self) -> None:
        while True:
            record = self._queue.get()
            try:
                if record is _STOP:
                    break
                self._writer.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
                if self._queue.empty():
                    self._writer.flush()
            except (OSError, TypeError) as err:  # a full disk must not stop the proxy: counted and logged
                metrics.CAPTURED.inc("any", "failed")
                log.warning("capture: cannot write %s: %s", self.options.path, err)
            finally:
                self._queue.task_done()
        self._writer.flush()
        self._writer.close()

    def sync(self) -> None:
        """Blocks until every record queued so far is written and flushed."""
        self._queue.join()

    def close(self) -> None:
        """Writes what is queued, then stops the writer (blocking: call it off the loop)."""
        self._queue.put(_STOP)
        self._thread.join()
