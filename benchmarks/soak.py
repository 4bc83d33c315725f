"""Soak: many concurrent clients through rerank-proxy for a while, then every written document checked in the cluster,
and the proxy's memory and open files compared before, during and after the load.

    python -m benchmarks.soak --upstream http://127.0.0.1:9200 --proxy http://127.0.0.1:9201
    python -m benchmarks.soak --upstream http://127.0.0.1:9200 --serve-proxy config.yaml \
        --duration 60 --clients 200 --documents 100000

`--serve-proxy CONFIG` starts `rerank-proxy serve --config CONFIG --listen 127.0.0.1:PORT --upstream URL` on a free
port and stops it at the end (nothing about the admin listener is passed: the config decides it); `--proxy URL` soaks
one already running, whose process is found by its listening port (`ss`, same user, as in passthrough_cpu.py). Either
way the soak waits, on the data port, until a forced search (`X-Rerank: on`) comes back `reranked`, so the start
level is taken with the model loaded. Loopback URLs only. `run_soak(SoakOptions(...)) -> SoakReport` is the same
thing as a function (tests/integration/test_soak.py calls it; the proxy stays a separate process).

The load: `--clients` asyncio clients (aiohttp, one keep-alive connection each), each a loop until its work is done:
  - writers (`--writer-share`, a quarter): `_bulk` NDJSON bodies of `--bulk-size` (250) `index` actions with
    deterministic ids (`d0000042`) and deterministic `_source` bodies (nested object, array, null, booleans, non-ASCII
    text). Every document is written `--writes-per-doc` (2) times, each time with another body; a batch's next write
    is queued only once its previous one has been answered, so the writes of one id never race and its `_version`
    must equal the number of its successful writes. Every `--refresh-every`th (10th) bulk of a writer carries
    `refresh=wait_for`, the others no refresh. Items refused with 429 are sent again with backoff. With no batch
    free, a writer GETs.
  - searchers (`--search-share`, a quarter): a 10-hit `match` search on the `text` field of the soak index, which
    the proxy reranks (the shipped config.yaml reranks any index without a rule of its own through `defaults`); the
    `X-Rerank-Status` of every search is counted.
  - getters (the rest): `GET /{index}/_doc/{id}` of documents already written; the `_source` must be one of the
    bodies sent for that id.
All documents are written through the proxy; the index is created, refreshed and read back directly in the cluster.

Duration and documents are independent: reads stop at `--duration`; writers go on until every document has been
written `--writes-per-doc` times, or until `--max-write-s` (default 10 x duration, at least 600 s), when the
documents not yet written are reported as such. The table says when the writes were done. On the 2-core machine this
was written on, the 200,000 writes of `--documents 100000` took 15-26 s with the 50 writers of the default run, so
they all ran under the full mixed load, and the reads went on for the rest of the 60 s.

At the end: the clients' connections are closed, the index refreshed, and every document fetched directly from the
cluster (`_mget`): present, the sha256 of its `_source` as canonical JSON (sorted keys, no spaces) equal to that of
the body last sent, `_version` equal to the number of successful writes; `_count` equal to the number of ids
written. As a cross-check of that version arithmetic, batch 0's write sequence is loaded directly into a control index
and the `_version` and `_source` of each of its ids compared with the soak index's.

The proxy's process is read from /proc: RSS (VmRSS) and open fds at start (before the load), at peak (sampled every
0.5 s on a thread of its own) and at end (after the load and after the clients closed their connections, polled until
the fds are back at the start level or 10 s have passed). Its sockets are told apart through /proc/PID/net/tcp{,6}:
client connections (on the proxy's port), upstream connections (to the cluster's port) and everything else. The
upstream pool keeps idle keep-alive connections for reuse (up to `upstream.pool_size`, 256 in the shipped config,
each closed after `upstream.pool_idle_timeout_s`, 60 s, unused), so right after the load they are bounded by the pool
size, not by the start level.

The run fails (exit 1) when:
  - any request through the proxy got a 5xx, a connection error or a client timeout, or an unexpected status (a
    GET of a written document other than 200; a search or a bulk other than 200 or 429). A 5xx is taken as the
    proxy's without replaying it directly: the cluster answers every one of these requests 200 (or 429 when
    pushed back). Fallbacks (`X-Rerank-Status: fallback; reason=...`) are expected under load and only counted;
  - any document is missing, has another `_source` or `_version`, is extra, or a GET returned a body never sent;
  - at end, the proxy's fds other than its pooled upstream connections are above the start level + `--fd-slack`
    (5), a client connection is still open in the proxy, or the pool holds more than `--upstream-pool-max` (256);
  - the proxy's RSS at end is more than `--rss-growth-mb` (200 MB) above its start. Why 200 MB: what a healthy proxy
    keeps after a soak is bounded by its config, not by the number of requests: the bi-encoder's embedding cache
    (20,000 x 384 float32, about 30-40 MB with its Python objects when full), the score cache (50,000 entries, a few
    MB), the engine's queue (256 searches) and the high-water mark of torch's and glibc's allocator arenas from the
    largest batches, which stay mapped. Measured here with the shipped config.yaml (MiniLM on CPU, start about
    940 MB): +69 and +102 MB after the default run (100,000 documents, 35,000-41,000 requests) on a fresh proxy,
    +100 MB on a second run against an already used one, +57-75 MB in the 15 s test. 200 MB is twice the most seen;
    a leak of a body or a connection per request (tens of KB x ~40,000) would cross it.

The markdown tables go to stdout, progress to stderr; with `--serve-proxy`, the proxy's warnings and errors follow.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from rerank_proxy_tools import anchors

KINDS = ("get", "search", "bulk")
_WORDS = (
    "protein cell tissue gene expression receptor signal pathway immune response tumor growth factor insulin glucose "
    "metabolism enzyme membrane channel calcium neuron synapse memory cortex vitamin bone density fracture risk "
    "infection virus bacteria antibody vaccine trial patient dose placebo mortality cohort study randomized blood "
    "pressure heart failure kidney liver lung asthma obesity diet exercise sleep stress hormone estrogen receptor "
    "mutation dna rna sequencing chromatin histone methylation stem differentiation embryo placenta pregnancy birth "
    "weight child adolescent aging dementia alzheimer parkinson stroke brain imaging marker inflammation cytokine "
    "macrophage lymphocyte platelet clotting anemia iron zinc folate smoking alcohol cancer breast prostate colon "
    "skin melanoma radiation chemotherapy surgery outcome survival relapse resistance drug toxicity"
).split()
_EXTRA = ("Zürich", "naïve", "über", "café", "straße", "東京", "данные", "ελληνικά", "emoji 🧪")
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


# ---- options and report -------------------------------------------------------------------------------------------


@dataclass
class SoakOptions:
    upstream: str  # the cluster, for setup and verification (never loaded with the soak's traffic)
    proxy: str  # the proxy's URL: all the soak's requests go there
    duration_s: float = 60.0  # readers stop then; writers go on until every document is written
    clients: int = 200
    documents: int = 100_000
    writes_per_doc: int = 2
    bulk_size: int = 250
    writer_share: float = 0.25  # share of the clients that write (GETs while no batch is free)
    search_share: float = 0.25  # share of the clients that search; the rest GET
    refresh_every: int = 10  # every Nth bulk of a writer carries refresh=wait_for
    max_write_s: float | None = None  # writers give up after this long; default max(600, 10 x duration)
    index: str | None = None  # default soak-<time>-<pid>
    keep: bool = False  # keep the indices afterwards
    proxy_pid: int | None = None  # default: the process listening on the proxy's port
    sample_interval_s: float = 0.5
    settle_s: float = 10.0
    fd_slack: int = 5
    upstream_pool_max: int = 256
    rss_growth_mb: float = 200.0  # RSS at end may exceed the start by this much (see the module's docstring)
    request_timeout_s: float = 120.0
    ready_timeout_s: float = 300.0  # how long to wait for the proxy's model to load before the load starts
    seed: int = 1
    log: Callable[[str], None] | None = None  # progress lines (default: stderr)


@dataclass
class Resources:
    """The proxy process at one moment."""

    rss_kb: int
    fds: int
    client_conns: int  # sockets on the proxy's own port other than the listening one
    upstream_conns: int  # sockets to the cluster's port: the pool
    upstream_states: dict[str, int] = field(default_factory=dict)
    client_states: dict[str, int] = field(default_factory=dict)

    @property
    def unpooled_fds(self) -> int:
        """Every fd but the pooled upstream connections."""
        return self.fds - self.upstream_conns


@dataclass
class SoakReport:
    options: SoakOptions
    index: str
    proxy_pid: int
    writers: int = 0
    searchers: int = 0
    proxy_exited: bool = False  # the proxy's process was gone at the end
    statuses: Counter = field(default_factory=Counter)  # (kind, status or error name) -> count
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    rerank_statuses: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # what made requests fail, by kind and cause
    first_failures: list[str] = field(default_factory=list)  # a few, with their bodies, for reproduction
    start: Resources | None = None
    peak: Resources | None = None
    end: Resources | None = None
    samples: int = 0
    settle_s: float = 0.0
    load_s: float = 0.0
    write_s: float = 0.0  # until the last write was answered
    verify_s: float = 0.0
    documents_planned: int = 0
    documents_written: int = 0  # ids with at least one successful write
    documents_compared: int = 0
    source_mismatched: int = 0
    version_mismatched: int = 0
    missing: int = 0
    extra: int = 0
    uncertain: int = 0  # ids whose last bulk got no clean answer: not compared
    unwritten: int = 0  # ids the writers never got to (max_write_s)
    read_mismatched: int = 0  # GET bodies that are none of the id's bodies
    bulk_version_anomalies: int = 0  # a bulk item's _version other than the id's write count
    item_rejections: Counter = field(default_factory=Counter)  # bulk items the cluster refused, by type
    control_compared: int = 0
    control_mismatched: int = 0
    mismatch_examples: list[str] = field(default_factory=list)
    proxy_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    # -- verdict --

    def rss_bound_kb(self) -> int:
        return int(self.options.rss_growth_mb * 1024)

    def problems(self) -> list[str]:
        out: list[str] = []
        if self.failures:
            out.append(f"{sum(self.failures.values())} failed requests through the proxy: "
                       + ", ".join(f"{k} x{n}" for k, n in self.failures.most_common()))
        for name, label in (("missing", "documents missing"), ("source_mismatched", "documents with another _source"),
                            ("version_mismatched", "documents with another _version"),
                            ("extra", "documents more in the index than written"),
                            ("read_mismatched", "GET answers with a body never sent"),
                            ("bulk_version_anomalies", "bulk items answered with an unexpected _version"),
                            ("control_mismatched", "ids whose _version differs from the direct control load")):
            if getattr(self, name):
                out.append(f"{getattr(self, name)} {label}")
        if self.start and self.end:
            o = self.options
            if self.end.unpooled_fds > self.start.unpooled_fds + o.fd_slack:
                out.append(f"fds at end {self.end.unpooled_fds} (without {self.end.upstream_conns} pooled upstream "
                           f"connections) > start {self.start.unpooled_fds} + {o.fd_slack}")
            if self.end.upstream_conns > o.upstream_pool_max:
                out.append(f"{self.end.upstream_conns} upstream connections at end > pool maximum "
                           f"{o.upstream_pool_max}")
            if self.end.client_conns > self.start.client_conns:
                out.append(f"{self.end.client_conns} client connections still open in the proxy after the clients "
                           f"closed theirs ({self.end.client_states})")
            growth = self.end.rss_kb - self.start.rss_kb
            if growth > self.rss_bound_kb():
                out.append(f"RSS grew by {growth / 1024:.0f} MB > bound {self.rss_bound_kb() / 1024:.0f} MB")
        elif self.proxy_exited:
            out.append(f"the proxy's process (pid {self.proxy_pid}) exited during the soak")
        else:
            out.append("the proxy's process was not measured")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()

    # -- tables --

    def table(self) -> str:
        """The report in markdown: requests, latencies, rerank statuses, the proxy's process, documents, verdict."""
        o = self.options
        getters = o.clients - self.writers - self.searchers
        lines = [
            (f"soak: {o.clients} clients ({self.writers} writing, {self.searchers} searching, {getters} getting), "
             f"reads for {o.duration_s:g} s, {self.documents_planned} documents x {o.writes_per_doc} writes in bulks "
             f"of {o.bulk_size}; index {self.index}; proxy pid {self.proxy_pid}; {os.cpu_count()} CPUs"),
            (f"load {self.load_s:.1f} s (writes done after {self.write_s:.1f} s), verify {self.verify_s:.1f} s; "
             f"CPU: proxy {self.proxy_cpu_s:.1f} s, soak client {self.client_cpu_s:.1f} s"),
            "", _row("kind", "status", "count"), "|---|---|---:|",
        ]
        by_kind = sorted(self.statuses.items(), key=lambda kv: (KINDS.index(kv[0][0]), str(kv[0][1])))
        lines += [_row(kind, status, n) for (kind, status), n in by_kind]
        lines += ["", _row("kind", "requests", "req/s", "p50 ms", "p99 ms", "max ms"), "|---|---:|---:|---:|---:|---:|"]
        for kind in KINDS:
            values = sorted(self.latencies[kind])
            if values:
                span = (self.load_s if kind == "bulk" else min(self.load_s, o.duration_s)) or 1
                lines.append(_row(kind, len(values), f"{len(values) / span:.0f}", f"{_pct(values, 50) * 1e3:.1f}",
                                  f"{_pct(values, 99) * 1e3:.1f}", f"{values[-1] * 1e3:.1f}"))
        lines += ["", _row("X-Rerank-Status (searches)", "count"), "|---|---:|"]
        lines += [_row(status, n) for status, n in self.rerank_statuses.most_common()]
        lines += self._process_table()
        lines += ["", _row("documents", "count"), "|---|---:|"]
        lines += [_row(label, value) for label, value in (
            ("planned", self.documents_planned),
            ("written (>= 1 successful write)", self.documents_written),
            ("compared", self.documents_compared),
            ("mismatched `_source`", self.source_mismatched),
            ("mismatched `_version`", self.version_mismatched),
            ("missing", self.missing),
            ("extra in the index", self.extra),
            ("uncertain (no clean bulk answer)", self.uncertain),
            ("not written in time", self.unwritten),
            ("GET bodies never sent", self.read_mismatched),
            ("control ids compared / `_version` differs", f"{self.control_compared} / {self.control_mismatched}"),
        )]
        if self.item_rejections:
            lines.append(f"\nbulk items refused by the cluster (retried): {dict(self.item_rejections)}")
        lines += [f"\nmismatch: {example}" for example in self.mismatch_examples[:5]]
        lines += [f"\nfailure: {failure}" for failure in self.first_failures[:5]]
        lines += [f"\nnote: {n}" for n in self.notes]
        problems = self.problems()
        lines.append("\nresult: " + ("PASS" if not problems else "FAIL\n- " + "\n- ".join(problems)))
        return "\n".join(lines)

    def _process_table(self) -> list[str]:
        if not (self.start and self.peak and self.end):
            return []
        o, s, p, e = self.options, self.start, self.peak, self.end

        def mb(kb: int) -> str:
            return f"{kb / 1024:.0f}"

        return [
            "", _row("proxy process", "start", "peak", "end", "end - start", "bound"), "|---|---:|---:|---:|---:|---|",
            _row("RSS MB", mb(s.rss_kb), mb(p.rss_kb), mb(e.rss_kb), f"{(e.rss_kb - s.rss_kb) / 1024:+.0f}",
                 f"<= +{self.rss_bound_kb() / 1024:.0f}"),
            _row("open fds", s.fds, p.fds, e.fds, f"{e.fds - s.fds:+d}", "-"),
            _row("fds without the upstream pool", s.unpooled_fds, p.unpooled_fds, e.unpooled_fds,
                 f"{e.unpooled_fds - s.unpooled_fds:+d}", f"<= +{o.fd_slack}"),
            _row("client connections", s.client_conns, p.client_conns, e.client_conns,
                 f"{e.client_conns - s.client_conns:+d}", "<= +0"),
            _row("upstream connections (pool)", s.upstream_conns, p.upstream_conns, e.upstream_conns,
                 f"{e.upstream_conns - s.upstream_conns:+d}", f"<= {o.upstream_pool_max}"),
            (f"\n{self.samples} samples every {o.sample_interval_s:g} s; end measured {self.settle_s:.1f} s after the "
             f"clients closed their connections; upstream sockets at end by state: {_states(e.upstream_states)}"),
        ]


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _pct(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def _states(states: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "none"


# ---- the proxy's process, from /proc ------------------------------------------------------------------------------


def _port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def _tcp_sockets(pid: int) -> dict[str, tuple[int, int, int]]:
    """inode -> (local port, remote port, state) for every TCP socket in the process's network namespace."""
    table: dict[str, tuple[int, int, int]] = {}
    for name in ("tcp", "tcp6"):
        try:
            text = Path(f"/proc/{pid}/net/{name}").read_text()
        except OSError:
            continue
        for line in text.splitlines()[1:]:
            cols = line.split()
            if len(cols) < 10:
                continue
            local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
            table[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), int(state, 16))
    return table


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ProcessLookupError(f"process {pid} has exited (a zombie has no VmRSS)")


def fd_targets(pid: int) -> list[str]:
    targets = []
    base = f"/proc/{pid}/fd"
    for fd in os.listdir(base):
        try:
            targets.append(os.readlink(f"{base}/{fd}"))
        except OSError:
            continue  # closed between the listing and the read
    return targets


def measure(pid: int, proxy_port: int, upstream_port: int, *, sockets: bool = True) -> Resources:
    """RSS and fds of `pid`; with `sockets`, its client and upstream connections told apart."""
    rss = rss_kb(pid)
    targets = fd_targets(pid)
    res = Resources(rss, len(targets), 0, 0)
    if not sockets:
        return res
    table = _tcp_sockets(pid)
    client_states: Counter = Counter()
    upstream_states: Counter = Counter()
    for target in targets:
        if not target.startswith("socket:["):
            continue
        entry = table.get(target[8:-1])
        if entry is None:
            continue
        local, remote, state = entry
        if state == 10:  # LISTEN
            continue
        if local == proxy_port:
            client_states[TCP_STATES.get(state, str(state))] += 1
        elif remote == upstream_port:
            upstream_states[TCP_STATES.get(state, str(state))] += 1
    res.client_conns, res.client_states = sum(client_states.values()), dict(client_states)
    res.upstream_conns, res.upstream_states = sum(upstream_states.values()), dict(upstream_states)
    return res


# ---- documents ----------------------------------------------------------------------------------------------------


def doc_id(n: int) -> str:
    return f"d{n:07d}"


def doc_body(n: int, write: int) -> dict[str, Any]:
    """The `_source` of document `n` at its `write`-th write (0-based): deterministic, different for each write."""
    rng = random.Random(n * 1009 + write * 7919 + 17)
    words = [rng.choice(_WORDS) for _ in range(rng.randint(12, 48))]
    if rng.random() < 0.2:
        words.insert(rng.randrange(len(words)), rng.choice(_EXTRA))
    return {
        "title": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 6))).capitalize(),
        "text": " ".join(words),
        "n": n,
        "write": write,
        "tags": sorted({rng.choice(_WORDS) for _ in range(rng.randint(0, 4))}),
        "meta": {"batch": n // 1000, "score": rng.randint(-10**6, 10**6), "flag": rng.random() < 0.5,
                 "note": None if rng.random() < 0.5 else "ünïcödé ✓"},
    }


def canonical_sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                          .encode()).hexdigest()


INDEX_BODY = {
    "settings": {"number_of_shards": 1, "number_of_replicas": 0},
    "mappings": {"properties": {"title": {"type": "text"}, "text": {"type": "text"}, "n": {"type": "integer"},
                                "write": {"type": "integer"}, "tags": {"type": "keyword"},
                                "meta": {"properties": {"batch": {"type": "integer"}, "score": {"type": "long"},
                                                        "flag": {"type": "boolean"}, "note": {"type": "keyword"}}}}},
}


def bulk_payload(ids: Sequence[int], write: int) -> bytes:
    lines = []
    for n in ids:
        lines.append(json.dumps({"index": {"_id": doc_id(n)}}))
        lines.append(json.dumps(doc_body(n, write), ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode()


# ---- the soak -----------------------------------------------------------------------------------------------------


class _Plan:
    """The writes still to do, as (batch, write) items. A batch's next write is queued only when its previous one has
    been answered, so the writes of one id never overlap."""

    def __init__(self, documents: int, bulk_size: int, writes: int):
        self.batches = [list(range(s, min(s + bulk_size, documents))) for s in range(0, documents, bulk_size)]
        self.writes = writes
        self.queue: deque[tuple[int, int]] = deque((b, 0) for b in range(len(self.batches)))
        self.in_flight = 0
        self.changed = asyncio.Condition()

    @property
    def done(self) -> bool:
        return not self.queue and not self.in_flight

    def take(self) -> tuple[int, int] | None:
        if not self.queue:
            return None
        self.in_flight += 1
        return self.queue.popleft()

    async def finish(self, batch: int, write: int) -> None:
        self.in_flight -= 1
        if write + 1 < self.writes:
            self.queue.append((batch, write + 1))
        async with self.changed:
            self.changed.notify_all()


class _Soak:
    def __init__(self, options: SoakOptions, report: SoakReport, session: aiohttp.ClientSession):
        self.o = options
        self.r = report
        self.session = session
        self.base = f"{options.proxy}/{report.index}"
        n = options.documents
        self.plan = _Plan(n, options.bulk_size, options.writes_per_doc)
        self.ok_writes = bytearray(n)  # successful writes per id (writes_per_doc < 256)
        self.uncertain = bytearray(n)
        self.written: list[int] = []  # ids with >= 1 successful write, for GETs
        self.read_deadline = 0.0
        self.write_deadline = 0.0
        self.last_write_done = 0.0

    # -- requests --

    async def request(self, kind: str, method: str, url: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int | None, Any, bytes]:
        """One request through the proxy, counted and timed; (status or None on error, headers, body)."""
        began = time.perf_counter()
        try:
            async with self.session.request(method, url, data=body, headers=headers) as resp:
                data = await resp.read()
                status, resp_headers = resp.status, resp.headers
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            name = "client timeout" if isinstance(err, TimeoutError) else f"error {type(err).__name__}"
            self.r.statuses[(kind, name)] += 1
            self.fail(kind, name, f"{method} {url}: {type(err).__name__}: {err}")
            return None, None, b""
        self.r.latencies[kind].append(time.perf_counter() - began)
        self.r.statuses[(kind, status)] += 1
        if status >= 500:
            self.fail(kind, f"{status}", f"{method} {url} -> {status}: {data[:500]!r}")
        return status, resp_headers, data

    def fail(self, kind: str, cause: str, detail: str) -> None:
        self.r.failures[f"{kind} {cause}"] += 1
        if len(self.r.first_failures) < 10:
            self.r.first_failures.append(detail)

    async def get(self, rng: random.Random) -> None:
        n = self.written[rng.randrange(len(self.written))]
        status, _, data = await self.request("get", "GET", f"{self.base}/_doc/{doc_id(n)}")
        if status is None or status >= 500:
            return
        if status != 200:
            self.fail("get", f"{status}", f"GET {self.base}/_doc/{doc_id(n)} (written) -> {status}: {data[:300]!r}")
            return
        try:
            source = json.loads(data)["_source"]
        except (ValueError, KeyError, TypeError):
            self.fail("get", "bad body", f"GET {self.base}/_doc/{doc_id(n)} -> {data[:300]!r}")
            return
        got = canonical_sha256(source)
        if not any(got == canonical_sha256(doc_body(n, w)) for w in range(self.o.writes_per_doc)):
            self.r.read_mismatched += 1
            self.r.mismatch_examples.append(f"GET {doc_id(n)} returned {json.dumps(source)[:300]}")

    async def search(self, rng: random.Random) -> None:
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
        body = json.dumps({"query": {"match": {"text": words}}, "size": 10}).encode()
        status, headers, data = await self.request("search", "POST", f"{self.base}/_search", body,
                                                   {"Content-Type": "application/json"})
        if status is None or status >= 500:
            return
        rerank = headers.get("X-Rerank-Status", "(none)")
        self.r.rerank_statuses["partial" if rerank.startswith("partial") else rerank] += 1
        if status == 429:
            return
        if status != 200:
            self.fail("search", f"{status}", f"POST {self.base}/_search {body!r} -> {status}: {data[:300]!r}")
            return
        try:
            hits = json.loads(data)["hits"]["hits"]
            assert isinstance(hits, list) and len(hits) <= 10
        except (ValueError, KeyError, TypeError, AssertionError):
            self.fail("search", "bad body", f"POST {self.base}/_search {body!r} -> {data[:300]!r}")

    async def bulk(self, batch: int, write: int, refresh: bool) -> None:
        """One pass over a batch; items the cluster refuses with 429 are sent again (up to 8 times, backing off)."""
        ids = self.plan.batches[batch]
        for attempt in range(8):
            url = f"{self.base}/_bulk" + ("?refresh=wait_for" if refresh else "")
            status, _, data = await self.request("bulk", "POST", url, bulk_payload(ids, write),
                                                 {"Content-Type": "application/x-ndjson"})
            if status is None or status >= 500:
                for n in ids:  # applied or not: unknown
                    self.uncertain[n] = 1
                return
            if status == 429:
                await asyncio.sleep(min(0.1 * 2 ** attempt, 5))  # the cluster's back-pressure: back off
                continue
            if status != 200:
                self.fail("bulk", f"{status}", f"POST {url} ({len(ids)} docs) -> {status}: {data[:300]!r}")
                for n in ids:
                    self.uncertain[n] = 1
                return
            try:
                items = json.loads(data)["items"]
                assert len(items) == len(ids)
            except (ValueError, KeyError, TypeError, AssertionError):
                self.fail("bulk", "bad body", f"POST {url} ({len(ids)} docs) -> {data[:300]!r}")
                for n in ids:
                    self.uncertain[n] = 1
                return
            retry = []
            for n, item in zip(ids, items, strict=True):
                result = item.get("index", {})
                code = result.get("status", 0)
                if 200 <= code < 300 and result.get("_id") == doc_id(n):
                    if self.ok_writes[n] == 0:
                        self.written.append(n)
                    self.ok_writes[n] += 1
                    if result.get("_version") != self.ok_writes[n]:
                        self.r.bulk_version_anomalies += 1
                        self.r.mismatch_examples.append(f"bulk item {doc_id(n)} write {write}: _version "
                                                        f"{result.get('_version')}, expected {self.ok_writes[n]}")
                else:
                    self.r.item_rejections[f"{code} {result.get('error', {}).get('type', '?')}"] += 1
                    if code == 429:
                        retry.append(n)
                    else:
                        self.uncertain[n] = 1
            if not retry:
                return
            ids = retry
            await asyncio.sleep(min(0.1 * 2 ** attempt, 5))
        for n in ids:
            self.uncertain[n] = 1
        self.r.notes.append(f"batch {batch} write {write}: {len(ids)} items still refused after 8 attempts")

    # -- clients --

    async def writer(self, index: int) -> None:
        rng = random.Random(self.o.seed * 100_003 + index)
        sent = 0
        while time.monotonic() < self.write_deadline:
            item = self.plan.take()
            if item is None:
                if time.monotonic() < self.read_deadline:
                    await self.get(rng)  # every batch is done or in someone's hands: read meanwhile
                    continue
                if self.plan.done:
                    return
                async with self.plan.changed:  # until another writer's answer queues the next pass
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.plan.changed.wait_for(lambda: self.plan.queue or self.plan.done),
                                               max(0.0, self.write_deadline - time.monotonic()))
                continue
            sent += 1
            try:
                await self.bulk(*item, refresh=sent % self.o.refresh_every == 0)
            finally:
                self.last_write_done = time.monotonic()
                await self.plan.finish(*item)

    async def getter(self, index: int) -> None:
        rng = random.Random(self.o.seed * 100_003 + index)
        while time.monotonic() < self.read_deadline:
            await self.get(rng)

    async def searcher(self, index: int) -> None:
        rng = random.Random(self.o.seed * 100_003 + index)
        while time.monotonic() < self.read_deadline:
            await self.search(rng)


async def _json(session: aiohttp.ClientSession, method: str, url: str, body: Any = None,
                ok: Sequence[int] = (200, 201)) -> Any:
    """A setup or verification call, directly to the cluster."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    ctype = "application/x-ndjson" if isinstance(body, bytes) else "application/json"
    async with session.request(method, url, data=data, headers={"Content-Type": ctype}) as resp:
        payload = await resp.read()
        if resp.status not in ok:
            raise RuntimeError(f"{method} {url} -> {resp.status}: {payload[:500]!r}")
        return json.loads(payload) if payload else None


class _Sampler(threading.Thread):
    """The proxy's RSS and fds every `interval` seconds, on a thread of its own so that a busy client loop does not
    delay the samples; keeps each figure's peak in `report.peak`."""

    def __init__(self, report: SoakReport, pid: int, ports: tuple[int, int], interval: float):
        super().__init__(name="soak-sampler", daemon=True)
        self.report, self.pid, self.ports, self.interval = report, pid, ports, interval
        self.halt = threading.Event()

    def run(self) -> None:
        peak = self.report.peak
        assert peak is not None
        while True:
            with contextlib.suppress(OSError):
                now = measure(self.pid, *self.ports)
                self.report.samples += 1
                peak.rss_kb = max(peak.rss_kb, now.rss_kb)
                peak.fds = max(peak.fds, now.fds)
                peak.client_conns = max(peak.client_conns, now.client_conns)
                peak.upstream_conns = max(peak.upstream_conns, now.upstream_conns)
            if self.halt.wait(self.interval):
                return

    def stop(self) -> None:
        self.halt.set()
        self.join()


def _progress(options: SoakOptions) -> Callable[[str], None]:
    return options.log or (lambda line: print(line, file=sys.stderr, flush=True))


async def _verify(session: aiohttp.ClientSession, soak: _Soak, report: SoakReport) -> None:
    """Every id against the cluster, directly: present with the last body and the write count as `_version`."""
    o, upstream, index = soak.o, soak.o.upstream, report.index
    await _json(session, "POST", f"{upstream}/{index}/_refresh")
    expected_present = 0
    for start in range(0, o.documents, 1000):
        ids = list(range(start, min(start + 1000, o.documents)))
        docs = (await _json(session, "POST", f"{upstream}/{index}/_mget", {"ids": [doc_id(n) for n in ids]}))["docs"]
        for n, doc in zip(ids, docs, strict=True):
            writes = soak.ok_writes[n]
            if soak.uncertain[n]:
                report.uncertain += 1
                expected_present += bool(doc.get("found"))  # whichever it is, it is counted below as such
                continue
            if writes == 0:
                if doc.get("found"):
                    report.extra += 1
                    report.mismatch_examples.append(f"{doc_id(n)} was never written but is in the index")
                continue
            expected_present += 1
            report.documents_compared += 1
            if not doc.get("found"):
                report.missing += 1
                report.mismatch_examples.append(f"{doc_id(n)} written {writes}x but missing")
                continue
            # the ids' writes never fail half-way silently: the last successful write is write number writes - 1
            if canonical_sha256(doc["_source"]) != canonical_sha256(doc_body(n, writes - 1)):
                report.source_mismatched += 1
                report.mismatch_examples.append(f"{doc_id(n)}: _source {json.dumps(doc['_source'])[:200]} "
                                                f"is not write {writes - 1}'s body")
            if doc.get("_version") != writes:
                report.version_mismatched += 1
                report.mismatch_examples.append(f"{doc_id(n)}: _version {doc.get('_version')}, written {writes}x")
    count = (await _json(session, "GET", f"{upstream}/{index}/_count"))["count"]
    if count > expected_present:
        report.extra += count - expected_present
        report.mismatch_examples.append(f"_count {count} > {expected_present} documents written")
    report.documents_written = sum(1 for w in soak.ok_writes if w)
    report.unwritten = sum(1 for n in range(o.documents) if soak.ok_writes[n] < o.writes_per_doc
                           and not soak.uncertain[n])
    # The version arithmetic, checked against the cluster itself: batch 0's writes loaded directly.
    batch = soak.plan.batches[0] if soak.plan.batches else []
    if batch and all(soak.ok_writes[n] == o.writes_per_doc and not soak.uncertain[n] for n in batch):
        control = f"{index}-control"
        await _json(session, "PUT", f"{upstream}/{control}", INDEX_BODY)
        try:
            for write in range(o.writes_per_doc):
                await _json(session, "POST", f"{upstream}/{control}/_bulk", bulk_payload(batch, write))
            await _json(session, "POST", f"{upstream}/{control}/_refresh")
            ids = [doc_id(n) for n in batch]
            mine = (await _json(session, "POST", f"{upstream}/{index}/_mget", {"ids": ids}))["docs"]
            theirs = (await _json(session, "POST", f"{upstream}/{control}/_mget", {"ids": ids}))["docs"]
            for a, b in zip(mine, theirs, strict=True):
                report.control_compared += 1
                if a.get("_version") != b.get("_version") or a.get("_source") != b.get("_source"):
                    report.control_mismatched += 1
                    report.mismatch_examples.append(f"{a.get('_id')}: soak _version {a.get('_version')}, direct "
                                                    f"control load {b.get('_version')}")
        finally:
            if not o.keep:
                await _json(session, "DELETE", f"{upstream}/{control}", ok=(200, 404))


async def _wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    """Polls `condition` until it holds or `timeout_s` has passed; whether it held."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval_s)  # polling a condition, with a deadline


async def _wait_for_model(session: aiohttp.ClientSession, base: str, timeout_s: float, report: SoakReport,
                          log: Callable[[str], None]) -> None:
    """A forced-rerank search until one is answered `reranked` or `partial`: the proxy may serve in the cluster's
    order while its models load, and the start level is taken with the model in memory. On the data port, so no
    admin endpoint is needed."""
    body = json.dumps({"query": {"match": {"text": "protein cell"}}, "size": 10}).encode()
    headers = {"Content-Type": "application/json", "X-Rerank": "on"}
    deadline = time.monotonic() + timeout_s
    status = ""
    while time.monotonic() < deadline:
        async with session.post(f"{base}/_search", data=body, headers=headers) as resp:
            await resp.read()
            status = resp.headers.get("X-Rerank-Status", "(none)")
        if status == "reranked" or status.startswith("partial"):
            log(f"proxy ready: a forced search answered X-Rerank-Status: {status}")
            return
        await asyncio.sleep(0.5)  # polling the model's readiness, with a deadline
    report.notes.append(f"no forced search was reranked within {timeout_s:g} s (last X-Rerank-Status {status!r}): "
                        "the start level may have been taken before the model loaded")


async def run_soak_async(options: SoakOptions) -> SoakReport:
    o = options
    if not 1 <= o.writes_per_doc <= 255:
        raise ValueError("writes_per_doc must be 1..255")
    pid = o.proxy_pid or anchors.listening_pid(_port(o.proxy))
    if pid is None:
        raise RuntimeError(f"no process of this user listens on {o.proxy}: its RSS and fds cannot be measured")
    report = SoakReport(o, o.index or f"soak-{int(time.time())}-{os.getpid()}", pid)
    report.documents_planned = o.documents
    report.writers = max(1, round(o.clients * o.writer_share)) if o.documents else 0
    report.searchers = min(o.clients - report.writers, round(o.clients * o.search_share))
    timeout = aiohttp.ClientTimeout(total=o.request_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as direct:
        await _json(direct, "PUT", f"{o.upstream}/{report.index}", INDEX_BODY)
        try:
            soak = _Soak(o, report, direct)
            await _warm_up(soak, timeout)
            await _load_and_measure(soak, timeout, (_port(o.proxy), _port(o.upstream)))
            _progress(o)(f"load done in {report.load_s:.1f} s; verifying {o.documents} documents")
            verify_began = time.monotonic()
            await _verify(direct, soak, report)
            report.verify_s = time.monotonic() - verify_began
        finally:
            if not o.keep:
                await _json(direct, "DELETE", f"{o.upstream}/{report.index}", ok=(200, 404))
    if report.write_s > o.duration_s + 1:
        report.notes.append(f"the writes took {report.write_s:.1f} s, {report.write_s - o.duration_s:.1f} s past the "
                            f"reads' {o.duration_s:g} s")
    return report


async def _warm_up(soak: _Soak, timeout: aiohttp.ClientTimeout) -> None:
    """Before the load: the first batch (so that GETs have documents from the start), and a search until the proxy's
    model has loaded, on a connection of their own that is closed before the start level is taken."""
    async with aiohttp.ClientSession(timeout=timeout) as warm:
        soak.session = warm
        if soak.plan.batches:
            item = soak.plan.take()
            assert item is not None
            await soak.bulk(*item, refresh=True)
            await soak.plan.finish(*item)
        await _wait_for_model(warm, soak.base, soak.o.ready_timeout_s, soak.r, _progress(soak.o))


async def _load_and_measure(soak: _Soak, timeout: aiohttp.ClientTimeout, ports: tuple[int, int]) -> None:
    """The proxy's start level, the load with its samples, and the end level once the clients have hung up."""
    o, report, pid = soak.o, soak.r, soak.r.proxy_pid
    await _wait_until(lambda: measure(pid, *ports).client_conns == 0, 5.0)  # the warm-up's connection gone
    start = report.start = measure(pid, *ports)
    report.peak = dataclasses.replace(start)
    cpu0, client0 = anchors.tree_cpu_seconds(pid), time.process_time()
    sampler = _Sampler(report, pid, ports, o.sample_interval_s)
    sampler.start()
    try:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=o.clients + 4, limit_per_host=0),
                                        timeout=timeout)
        soak.session = session
        try:
            await _load(soak)
        finally:
            await session.close()  # every client connection closed
        closed = time.monotonic()
        report.client_cpu_s = time.process_time() - client0

        def settled() -> bool:  # the fds other than the upstream pool back at the start level
            report.end = measure(pid, *ports)
            return report.end.unpooled_fds <= start.unpooled_fds and report.end.client_conns <= start.client_conns

        try:
            await _wait_until(settled, o.settle_s)
        except OSError:  # /proc/PID is gone
            report.end = None
            report.proxy_exited = True
        report.settle_s = time.monotonic() - closed
        report.proxy_cpu_s = anchors.tree_cpu_seconds(pid) - cpu0
    finally:
        sampler.stop()


async def _load(soak: _Soak) -> None:
    o, report = soak.o, soak.r
    began = time.monotonic()
    soak.read_deadline = began + o.duration_s
    max_write = o.max_write_s if o.max_write_s is not None else max(600.0, 10 * o.duration_s)
    soak.write_deadline = began + max(o.duration_s, max_write)
    getters = o.clients - report.writers - report.searchers
    if not soak.written:
        getters = 0  # nothing to GET: a proxy that lost the first bulk fails on that alone
    roles = [soak.writer] * report.writers + [soak.searcher] * report.searchers + [soak.getter] * getters
    tasks = [asyncio.create_task(role(i)) for i, role in enumerate(roles)]
    progress = asyncio.create_task(_report_progress(soak, began, _progress(o)))
    try:
        await asyncio.gather(*tasks)
    finally:
        progress.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, progress, return_exceptions=True)
    report.load_s = time.monotonic() - began
    report.write_s = (soak.last_write_done or time.monotonic()) - began


async def _report_progress(soak: _Soak, began: float, log: Callable[[str], None]) -> None:
    while True:
        await asyncio.sleep(5)  # a progress line, nothing waits on it
        done = sum(soak.ok_writes)
        requests = sum(soak.r.statuses.values())
        log(f"{time.monotonic() - began:5.0f} s: {requests} requests, {done} of "
            f"{soak.o.documents * soak.o.writes_per_doc} writes, {sum(soak.r.failures.values())} failures")


def run_soak(options: SoakOptions) -> SoakReport:
    """The soak against the proxy at `options.proxy` (a separate process); blocks until verified."""
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(run_soak_async(options))


# ---- command line -------------------------------------------------------------------------------------------------


def start_proxy(config: Path, upstream: str, workdir: Path, timeout_s: float = 300,
                command: Sequence[str] | None = None, cwd: Path | None = None) -> anchors.Launched:
    """`rerank-proxy serve --config CONFIG --listen 127.0.0.1:PORT --upstream URL` on a free port, its output in
    `workdir`; returns once the data port answers HTTP. `command` replaces the console script (e.g. `python -m
    proxy.cli`, run in `cwd`). Nothing about the admin listener is passed: the config decides it. (Whether the
    models have loaded is checked on the data port by the soak itself.)"""
    port = anchors.free_port()
    args = [*(command or [anchors.rerank_proxy_binary()]), "serve", "--config", str(config),
            "--listen", f"127.0.0.1:{port}", "--upstream", upstream]
    log = workdir / "rerank-proxy.out"
    with open(log, "ab") as out:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    launched = anchors.Launched("rerank-proxy", process, port, log)
    anchors.wait_ready(launched, timeout_s)
    return launched


def check_loopback(url: str, what: str) -> str:
    """The soak only ever talks to this machine: a typo must not aim its load at a real cluster."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    host = parts.hostname or ""
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if parts.scheme != "http" or not loopback:
        raise SystemExit(f"--{what}: expected an http:// loopback URL, got {url!r}")
    return url.rstrip("/")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="the cluster (setup and verification only)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--proxy", help="URL of a running proxy in front of --upstream")
    target.add_argument("--serve-proxy", type=Path, metavar="CONFIG",
                        help="start `rerank-proxy serve --config CONFIG` on a free port in front of --upstream")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of mixed load (readers stop then)")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--writes-per-doc", type=int, default=2)
    parser.add_argument("--bulk-size", type=int, default=250)
    parser.add_argument("--writer-share", type=float, default=0.25)
    parser.add_argument("--search-share", type=float, default=0.25)
    parser.add_argument("--refresh-every", type=int, default=10)
    parser.add_argument("--max-write-s", type=float, help="writers give up after this long (default max(600, 10 x "
                                                          "duration))")
    parser.add_argument("--fd-slack", type=int, default=5)
    parser.add_argument("--upstream-pool-max", type=int, default=256)
    parser.add_argument("--rss-growth-mb", type=float, default=200.0,
                        help="RSS at end may exceed the start by this much (default 200 MB)")
    parser.add_argument("--index", help="index name (default soak-<time>-<pid>); created, and deleted at the end")
    parser.add_argument("--keep", action="store_true", help="keep the index afterwards")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.upstream = check_loopback(args.upstream, "upstream")
    if args.proxy:
        args.proxy = check_loopback(args.proxy, "proxy")
    return args


def options_from_args(args: argparse.Namespace, proxy: str, pid: int | None) -> SoakOptions:
    return SoakOptions(
        upstream=args.upstream, proxy=proxy, duration_s=args.duration, clients=args.clients,
        documents=args.documents, writes_per_doc=args.writes_per_doc, bulk_size=args.bulk_size,
        writer_share=args.writer_share, search_share=args.search_share, refresh_every=args.refresh_every,
        max_write_s=args.max_write_s, index=args.index, keep=args.keep, proxy_pid=pid, fd_slack=args.fd_slack,
        upstream_pool_max=args.upstream_pool_max, rss_growth_mb=args.rss_growth_mb, seed=args.seed,
    )


def log_findings(log: Path) -> list[str]:
    """The proxy's WARNING/ERROR/CRITICAL lines and tracebacks, first few."""
    lines = log.read_text(errors="replace").splitlines()
    found = [line for line in lines if any(f" {level} " in line for level in ("WARNING", "ERROR", "CRITICAL"))
             or line.startswith("Traceback")]
    return found[:10] + ([f"... {len(found) - 10} more"] if len(found) > 10 else [])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        launched = None
        if args.serve_proxy:
            launched = start_proxy(args.serve_proxy, args.upstream, Path(scratch))
            print(f"started rerank-proxy (pid {launched.process.pid}) on {launched.url}", file=sys.stderr)
        try:
            proxy = launched.url if launched else args.proxy
            report = run_soak(options_from_args(args, proxy, launched.process.pid if launched else None))
        finally:
            findings = []
            if launched:
                launched.stop()
                findings = log_findings(launched.log)
    print(report.table())
    if findings:
        print("\nproxy log, warnings and errors:\n" + "\n".join(f"    {line}" for line in findings))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
