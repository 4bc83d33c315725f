"""The access log: one JSON line per request on the data port, through the stdlib logger `rerank_proxy.access`.

A line holds what the request was and how it went, never what it carried:

    {"ts": "2025-01-02T03:04:05.678Z", "request_id": "5f0c3a9e1b2d4c6f", "opaque_id": "my-app", "method": "POST",
     "path": "/{index}/_search", "index": "products", "status": 200, "bytes_in": 52, "bytes_out": 8411,
     "upstream_ms": 3.912, "queue_ms": 1.204, "model_ms": 38.5, "rerank_status": "reranked", "rerank_reason": null,
     "variant": "control", "total_ms": 47.3, "error": null, "trace_id": null}

- `path` is a template of the path: the API's own words kept (`_search`, `_doc`, `_cat/indices`), an index expression
  in first place is `{index}`, a document id `{id}`, any other value `{name}`; the query string never appears. The
  index expression as the client wrote it is the `index` field.
- No header is logged but `X-Opaque-Id` and `X-Request-Id` (its value becomes `request_id`, else one is made up);
  no body, no credentials (the client's, or the ones in an upstream URL), no query text.
- Times are the ones the proxy takes anyway: the cluster call as the relay (or, for a rewritten search, the search
  path) timed it, the engine's queue and model time as the engine accounts them to the search, the total from the
  request's head parsed to its answer written.

Requests are sampled (`access_log.sample`); errors are logged whatever the sample says (`always_log_errors`). A
request that is not logged costs the event loop a few attribute reads; a logged one a small record handed to the
logger, whose handler keeps it in a bounded buffer. A thread of its own makes the lines of what has gathered and
writes them every 50 ms (or once 256 wait), whole lines up to 4 KB a write, so a slow disk never stalls a request; a
record that finds the buffer full is dropped and counted (`rerank_proxy_access_log_dropped_total`).
"""
from __future__ import annotations

import functools
import itertools
import logging
import logging.handlers
import os
import random
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from . import metrics
from .config import AccessLogOptions, ConfigError
from .facts import SearchFacts

if TYPE_CHECKING:
    from .relay import Incoming

LOGGER_NAME = "rerank_proxy.access"
log = logging.getLogger(__name__)  # the application log, for the access log's own trouble

_API_WORD = re.compile(r"_[a-z][a-z_]{0,40}\Z")  # `_search`, `_cat`, `_doc`: an API's name, never a value
_BEFORE_ID = frozenset({"_doc", "_create", "_update", "_source", "_explain", "_termvectors"})  # ... `/{id}`
# Path words of the cluster APIs (and the proxy's own) that are not underscore-prefixed: kept in a template. A
# segment not known here is a value (`{name}`), which is the safe way to be wrong.
_PLAIN_WORDS = frozenset({
    "aliases", "allocation", "api", "api_key", "cache", "clear", "clone", "close", "compare", "count", "disk",
    "eval", "events", "experiments", "explain", "field", "fielddata", "health", "hot_threads", "indices", "info",
    "live", "master", "metrics", "nodeattrs", "nodes", "open", "pending_tasks", "pipeline", "plugins", "policy",
    "privilege", "ready", "recovery", "reload", "reload_secure_settings", "repositories", "reroute", "restore",
    "role", "role_mapping", "scroll", "segments", "settings", "shards", "simulate", "snapshots", "state", "stats",
    "status", "tasks", "template", "templates", "thread_pool", "ui", "usage", "user", "verify",
})
_MAX_SEGMENTS = 8  # a longer path's template ends in `/...`
_MAX_VALUE = 256  # characters kept of the index expression and the ids the client sent


def _text(value: str) -> str:
    """A decoded path segment as valid UTF-8 text (undecodable bytes survive decoding as surrogates), shortened."""
    if not value.isascii():
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value if len(value) <= _MAX_VALUE else value[:_MAX_VALUE] + "…"


@functools.lru_cache(maxsize=4096)
def path_template(path: str) -> tuple[str, str | None]:
    """A decoded request path as (template, index expression): `/products/_doc/42` is (`/{index}/_doc/{id}`,
    `products`). A target that is not a path (`*`, `http://host/`) is `-`: it may hold anything, credentials too."""
    if not path.startswith("/"):
        return "-", None
    segments = path[1:].split("/")
    out: list[str] = []
    index = None
    before_id = False
    for i, segment in enumerate(segments):
        if i == _MAX_SEGMENTS:
            out.append("...")
            break
        if not segment:
            out.append("")
        elif before_id:
            out.append("{id}")
        elif _API_WORD.match(segment):
            out.append(segment)
        elif i == 0:
            out.append("{index}")
            index = _text(segment)
        elif segment in _PLAIN_WORDS:
            out.append(segment)
        else:
            out.append("{name}")
        before_id = segment in _BEFORE_ID
    return "/" + "/".join(out), index


def route_of(raw_path: bytes) -> tuple[str, str | None]:
    """`path_template` of a raw path, decoded as the proxy routes it (so `%5Fsearch` is `_search`)."""
    path = raw_path.decode("latin-1")
    if "%" in path:
        path = unquote(path, errors="surrogateescape")
    return path_template(path)


def _text_of(value: bytes) -> str:
    """A header value as text: UTF-8 where it is, else latin-1; shortened."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = value.decode("latin-1")
    return text if len(text) <= _MAX_VALUE else text[:_MAX_VALUE] + "…"


def _ids(pairs: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """The request's `X-Request-Id` and `X-Opaque-Id` (the first of each), the only headers ever read for the log."""
    request_id = opaque_id = None
    for key, value in pairs:
        if 11 <= len(key) <= 12 and key[:2] in (b"x-", b"X-"):  # the two names' lengths
            lower = key.lower()
            if lower == b"x-request-id" and request_id is None:
                request_id = _text_of(value)
            elif lower == b"x-opaque-id" and opaque_id is None:
                opaque_id = _text_of(value)
    return request_id, opaque_id


_ID_PREFIX = os.urandom(4).hex()  # made-up request ids: random per process, then counted
_ID_COUNT = itertools.count()


_last_second = (0, "1970-01-01T00:00:00")


def _timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds, `2025-01-02T03:04:05.678Z` (the second's text made once per second)."""
    global _last_second
    second = int(created)
    if _last_second[0] != second:
        _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_last_second[1]}.{int((created - second) * 1000):03d}Z"


def _ms(seconds: float | None) -> float | None:
    """Milliseconds, to the microsecond."""
    return None if seconds is None else int(seconds * 1_000_000) / 1000


@dataclass(slots=True, eq=False, repr=False)
class AccessRecord:
    """One answered request. Its text (`str()`, `repr()`) is its JSON line, never the raw path or headers it holds."""

    created: float  # time.time() at the answer
    method: str | None  # None: the request could not be parsed
    raw_path: bytes
    pairs: list[tuple[bytes, bytes]]  # the request's headers, read for X-Request-Id and X-Opaque-Id only
    status: int
    bytes_in: int
    bytes_out: int
    total_s: float
    upstream_s: float | None = None
    facts: SearchFacts | None = None
    error: str | None = None
    trace_id: str | None = None

    def fields(self) -> dict[str, Any]:
        template, index = route_of(self.raw_path) if self.method is not None else (None, None)
        request_id, opaque_id = _ids(self.pairs)
        facts = self.facts
        fields = {
            "ts": _timestamp(self.created),
            "request_id": request_id or f"{_ID_PREFIX}{next(_ID_COUNT):08x}",
            "opaque_id": opaque_id,
            "method": self.method,
            "path": template,
            "index": index,
            "status": self.status,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "upstream_ms": _ms(self.upstream_s),
            "queue_ms": None,
            "model_ms": None,
            "rerank_status": None,
            "rerank_reason": None,
            "variant": None,
            "total_ms": _ms(self.total_s),
            "error": self.error,
            "trace_id": self.trace_id,
        }
        if facts is not None:
            split = [metrics.split_status(status) for status in facts.statuses]
            reasons = [reason for _, reason in split]
            fields["queue_ms"], fields["model_ms"] = _ms(facts.queue_s), _ms(facts.model_s)
            # One search: its outcome and reason; an `_msearch`: its items', comma-separated in order.
            fields["rerank_status"] = ",".join(outcome for outcome, _ in split) if split else None
            fields["rerank_reason"] = ",".join(reasons) if any(reasons) else None
            fields["variant"] = facts.variant
        return fields

    def line(self) -> bytes:
        return orjson.dumps(self.fields())

    def __str__(self) -> str:
        return self.line().decode()

    __repr__ = __str__


_START = time.time()
_YIELD_EVERY = 32
_CHUNK_CHARS = 3500  # lines per write at most this long: within PIPE_BUF (4096 bytes), so a pipe's write is atomic


class _LineRecord(logging.LogRecord):
    """A LogRecord of one access-log line, made in a fraction of the stdlib constructor's time: its message is the
    AccessRecord (whose text is the line: made by whoever formats it), and what says where a record was logged from
    is the same for every line (copied in at once: formatters read a record's `__dict__`)."""

    def __init__(self, record: AccessRecord):  # the stdlib one is not called, on purpose
        self.__dict__.update(_RECORD_DEFAULTS)
        self.msg = record
        created = self.created = record.created
        self.msecs = (created - int(created)) * 1000
        self.relativeCreated = (created - _START) * 1000


_RECORD_DEFAULTS = {
    key: value for key, value in vars(logging.LogRecord(LOGGER_NAME, logging.INFO, __file__, 0, "", None, None)).items()
    if key not in ("msg", "created", "msecs", "relativeCreated")
} | {"funcName": "write", "thread": None, "threadName": None, "process": None, "processName": None}


class _Batches(logging.Handler):
    """The logger's handler: a record goes into a bounded buffer (a full one drops it, counted); a thread of its own
    makes the lines of what has gathered every `interval_s`, or sooner once `batch` records wait, and writes them a few
    KB at a time through the destination's stdlib handler (a stream, or a file reopened when logrotate moves it). The
    event loop never formats, writes or waits for the thread. Lines made together cost less than lines made one per
    request among its own work (measured under load: 10 µs a line here, 17 µs on the loop); the thread lets the loop
    have the GIL every `_YIELD_EVERY` lines."""

    def __init__(self, target: logging.Handler, limit: int, batch: int = 256, interval_s: float = 0.05):
        super().__init__(logging.INFO)
        self.target, self.limit, self.batch, self.interval_s = target, limit, batch, interval_s
        self.lines: deque[logging.LogRecord] = deque()
        self.handed = 0  # lines taken (on the loop's thread)
        self.written = 0  # and written (on the writer's)
        self._done = threading.Condition()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="rerank-proxy-access-log", daemon=True)

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) >= self.limit:
            metrics.ACCESS_LOG_DROPPED.inc()
            return
        self.lines.append(record)
        self.handed += 1
        if len(self.lines) == self.batch:
            self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._write()
        self._write()

    def _write(self) -> None:
        count = 0
        chunk: list[str] = []
        size = 0
        while self.lines:
            count += 1
            try:
                line = self.lines.popleft().getMessage()
            except Exception:  # a bug of ours: that line is lost, the others are written
                log.exception("access log: a line could not be made")
                continue
            if chunk and size + len(line) > _CHUNK_CHARS:
                self._emit(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += len(line) + 1
            if count % _YIELD_EVERY == 0:
                time.sleep(0)  # the event loop's turn, if it waits for the GIL
        if chunk:
            self._emit(chunk)
        with self._done:
            self.written += count
            self._done.notify_all()

    def _emit(self, lines: list[str]) -> None:
        """Whole lines in one record, one write (the stdlib handler adds the last newline), small enough that a write
        to a pipe shared with the application log (stderr) is never interleaved with another writer's."""
        self.target.handle(logging.LogRecord(LOGGER_NAME, logging.INFO, __file__, 0, "\n".join(lines), None, None))

    def sync(self, timeout_s: float = 60.0) -> None:
        """Blocks until every line taken so far is written."""
        wanted = self.handed
        self._wake.set()
        with self._done:
            self._done.wait_for(lambda: self.written >= wanted, timeout_s)

    def stop(self) -> None:
        """Writes what is left, then ends the thread (blocking)."""
        if self._thread.is_alive():
            self._stopping = True
            self._wake.set()
            self._thread.join()
        self.target.close()


def _destination(where: str) -> logging.Handler:
    if where == "stderr":
        return logging.StreamHandler(sys.stderr)
    if where == "stdout":
        return logging.StreamHandler(sys.stdout)
    try:
        return logging.handlers.WatchedFileHandler(where, encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"access_log.destination: cannot open {where}: {err.strerror or err}") from None


class AccessLog:
    """The access log of one config: whether a request is logged, and its line handed to the logger. `rng`: the
    sampling draw (tests inject their own). One logger per process: a second proxy in the same process (as tests
    run them) writes to it too."""

    def __init__(self, options: AccessLogOptions, rng: Callable[[], float] = random.random):
        self.options = options
        self.enabled = options.enabled
        self.sample = options.sample
        self.always_log_errors = options.always_log_errors
        self.rng = rng
        self.logger = logging.getLogger(LOGGER_NAME)
        self._handler: _Batches | None = None
        self._running = False
        if self.enabled:
            self._handler = _Batches(_destination(options.destination), options.queue_records)

    def wants(self, status: int, error: str | None, facts: SearchFacts | None) -> bool:
        """Whether this answer gets a line: an error always (with `always_log_errors`), any other one as sampled."""
        sample = self.sample
        if sample >= 1.0:
            return True
        if self.always_log_errors and (status >= 500 or error is not None or (facts is not None and facts.fell_back)):
            return True
        return sample > 0.0 and self.rng() < sample

    def write(self, record: AccessRecord) -> None:
        self.logger.handle(_LineRecord(record))

    def install(self) -> None:
        """Starts the writer and attaches this log's handler to the logger. A reload swaps the old config's for the
        new one's on the event loop (`detach`, then `install`), so no line goes to both or neither."""
        logger = self.logger
        logger.propagate = False  # the lines are the access log's alone, not the application log's
        logger.setLevel(logging.INFO)
        if self._handler is not None:
            if not self._running:
                self._handler.start()
                self._running = True
            logger.addHandler(self._handler)

    def sync(self) -> None:
        """Blocks until every line handed over so far is written."""
        if self._handler is not None and self._running:
            self._handler.sync()

    def detach(self) -> None:
        if self._handler is not None:
            self.logger.removeHandler(self._handler)

    def close(self) -> None:
        """Writes what is left, then stops the writer (blocking: call it off the loop)."""
        self.detach()
        if self._handler is not None:
            self._running = False
            self._handler.stop()


def request_record(incoming: Incoming | None, status: int, sent: int, error: str | None,
                   facts: SearchFacts | None, trace_id: str | None = None) -> AccessRecord:
    """The record of an answered request (`incoming` None: one that could not be parsed), as the relay reports it."""
    if incoming is None:
        return AccessRecord(time.time(), None, b"", [], status, 0, sent, 0.0, error=error)
    head = incoming.head
    upstream_s = incoming.upstream_s  # the relay's pass-through, and the search path's rewritten request
    if facts is not None and facts.upstream_s is not None:
        upstream_s = facts.upstream_s + (upstream_s or 0.0)
    return AccessRecord(time.time(), head.method, head.raw_path, head.pairs, status, incoming.body.size, sent,
                        time.perf_counter() - incoming.started, upstream_s, facts, error, trace_id)
