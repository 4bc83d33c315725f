"""What the proxy costs: latency and throughput against the cluster directly vs through rerank-proxy.

    python -m benchmarks.proxy_overhead --upstream http://127.0.0.1:9200 --proxy http://127.0.0.1:9201
    python -m benchmarks.proxy_overhead --upstream http://127.0.0.1:9200 --serve-proxy config.yaml --nginx --haproxy

Cases, each at every `--concurrency`:
  get     `GET /{index}/_doc/{id}`: pure pass-through
  search  a 10-hit `match` search, direct vs through the proxy with `X-Rerank: off` (the skip path)
  rerank  the same search through the proxy with `X-Rerank: on`; compared with the direct search

The proxy reranks the index with its config's window: the shipped config.yaml's `defaults` (window 100) cover
`bench-scifact`, which has no rule of its own. Without `--index` the script creates `bench-scifact` and loads
SciFact into it, directly into the cluster, unless it is already there.

Reference arms: `--nginx` and `--haproxy` start nginx and HAProxy from the Debian packages in front of the same
cluster (rerank_proxy_tools/anchors.py: one worker each, upstream keep-alive, no access log) and add them beside the proxy in
the get and search cases, so the table shows what a general-purpose proxy costs next to what rerank-proxy costs.
`--serve-proxy CONFIG` starts `rerank-proxy serve` itself on a free port instead of `--proxy`. Each arm's CPU per
request is that of its process and all its descendants (the direct arm's is the cluster's), when its process can be
found (`ss`, same user); the goal for rerank-proxy (issue 16) is at most 2x nginx's CPU and 0.7x direct throughput.

Load: a fixed number of workers per cell, each sending one request at a time on keep-alive connections until the
cell's time is up (or `--max-requests`). A cell's time is split into rounds run in ABBA order across its arms (direct,
proxy, ...), so slow drifts on a shared machine hit both sides alike. Loopback URLs only. The markdown table goes to
stdout, progress to stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import json
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import aiohttp

from rerank_proxy_tools import anchors, indexing

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "scifact"
DEFAULT_INDEX = "bench-scifact"
HITS = 10
BULK_DOCS = 1000  # documents per _bulk request while loading
ID_SAMPLE = 1000  # document ids drawn for the get case


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: bytes | None  # pre-serialised so the client spends no time on JSON while measuring


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: where the requests go and with which extra headers."""

    label: str
    base_url: str
    headers: dict[str, str] = field(default_factory=dict)
    uses_model: bool = False  # leaves model work behind: wait for the proxy's model queue to empty after it
    pid: int | None = None  # root of the process tree whose CPU is charged to this arm; None: not measured
    kind: str = "proxy"  # direct, nginx, haproxy or proxy


@dataclass
class Stats:
    """Measurements of one arm in one cell, pooled over its rounds."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed_s: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)  # X-Rerank-Status values seen
    cpu_s: float = math.nan  # CPU time of the arm's process tree while it ran (NaN: not measured)

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile (q in 0..100) of the successful requests' latencies."""
        if not self.latencies_ms:
            return math.nan
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / len(self.latencies_ms) * 1e6 if self.latencies_ms else math.nan

    def add_cpu(self, seconds: float) -> None:
        self.cpu_s = seconds if math.isnan(self.cpu_s) else self.cpu_s + seconds

    @property
    def throughput(self) -> float:
        """Successful requests per second of wall time the arm ran."""
        return len(self.latencies_ms) / self.elapsed_s if self.elapsed_s > 0 else math.nan


@dataclass(frozen=True)
class Case:
    name: str
    calls: Sequence[Call]
    arms: Sequence[Arm]  # arms[0] is the direct baseline every other arm is compared with


# Waits until the proxy's model is idle (see `drain_model`).
Drain = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Row:
    case: str  # the arm's label
    concurrency: int
    direct: Stats
    proxy: Stats  # the arm's stats (a reference relay's too)
    group: str = ""  # the case the arm belongs to (get, search, rerank)
    kind: str = "proxy"


# ---- request generation -----------------------------------------------------------------------------------------


def _search_body(field_name: str, query: str) -> bytes:
    return json.dumps({"query": {"match": {field_name: query}}, "size": HITS}).encode()


def search_calls(index: str, field_name: str, queries: Sequence[str]) -> list[Call]:
    path = f"/{quote(index)}/_search"
    return [Call("POST", path, _search_body(field_name, q)) for q in queries]


def get_calls(index: str, ids: Sequence[str]) -> list[Call]:
    return [Call("GET", f"/{quote(index)}/_doc/{quote(doc_id, safe='')}", None) for doc_id in ids]


def read_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def percent_mix(statuses: Counter[str]) -> str:
    """`reranked 97%, fallback; reason=timeout 3%`, most frequent first; empty when no status was seen."""
    total = sum(statuses.values())
    return ", ".join(f"{status} {100 * n / total:.0f}%" for status, n in statuses.most_common()) if total else ""


# ---- load generator ---------------------------------------------------------------------------------------------


def _session(concurrency: int, timeout_s: float) -> aiohttp.ClientSession:
    # One keep-alive connection per worker. No Accept-Encoding, like the official clients' defaults: the cluster
    # then answers uncompressed and neither side pays for gzip.
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
        auto_decompress=False,
    )


async def run_arm(
    session: aiohttp.ClientSession,
    arm: Arm,
    calls: Sequence[Call],
    concurrency: int,
    duration_s: float,
    max_requests: int,
    start_at: int,
    into: Stats | None,
) -> int:
    """`concurrency` workers loop requests until the time or the request budget is spent; returns the next call
    position so successive rounds continue through the query list instead of repeating its start."""
    headers = {"Content-Type": "application/json", **arm.headers}
    counter = itertools.count(start_at)
    limit = start_at + max_requests
    started = time.perf_counter()
    deadline = started + duration_s
    last = start_at

    async def worker() -> None:
        nonlocal last
        while True:
            i = next(counter)
            if i >= limit or time.perf_counter() >= deadline:
                return
            last = max(last, i + 1)
            call = calls[i % len(calls)]
            t0 = time.perf_counter()
            try:
                async with session.request(call.method, arm.base_url + call.path, data=call.body, headers=headers) as r:
                    await r.read()
                    ok = r.status == 200
                    status = r.headers.get("X-Rerank-Status")
            except (TimeoutError, aiohttp.ClientError):
                ok, status = False, None
            elapsed_ms = (time.perf_counter() - t0) * 1000
            if into is None:
                continue
            if ok:
                into.latencies_ms.append(elapsed_ms)
            else:
                into.errors += 1
            if status is not None:
                into.statuses[status] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if into is not None:
        # Until the last in-flight request finished: the requests started before the deadline all count.
        into.elapsed_s += time.perf_counter() - started
    return last


def _cpu(arm: Arm) -> float:
    return anchors.tree_cpu_seconds(arm.pid) if arm.pid is not None else math.nan


async def run_case(
    case: Case,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    rounds: int,
    max_requests: int,
    timeout_s: float,
    drain: Drain,
) -> list[Stats]:
    """One cell per arm. Rounds alternate the arm order (A B, B A, ...); each arm keeps its connections throughout.

    The measured rounds continue through the query list where the warm-up stopped: a proxy that caches per
    document would otherwise be measured on exactly the documents the warm-up just cached."""
    sessions = [_session(concurrency, timeout_s) for _ in case.arms]
    stats = [Stats() for _ in case.arms]
    position = [0] * len(case.arms)
    per_round = duration_s / rounds
    budget = max(1, max_requests // rounds)
    try:
        for a, arm in enumerate(case.arms):
            if warmup_s > 0:
                position[a] = await run_arm(sessions[a], arm, case.calls, concurrency, warmup_s, budget, 0, None)
                if arm.uses_model:
                    await drain()
        for r in range(rounds):
            order = list(range(len(case.arms)))
            if r % 2:
                order.reverse()
            for a in order:
                arm = case.arms[a]
                cpu_before = _cpu(arm)
                position[a] = await run_arm(
                    sessions[a], arm, case.calls, concurrency, per_round, budget, position[a], stats[a]
                )
                if arm.uses_model:
                    # Searches that fell back at their deadline may still hold the model (a running batch is not
                    # interrupted); that CPU must not be charged to the next arm (it is charged to this one).
                    await drain()
                if arm.pid is not None:
                    stats[a].add_cpu(_cpu(arm) - cpu_before)
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    return stats


# ---- cluster setup ----------------------------------------------------------------------------------------------


def check_loopback(url: str, what: str) -> str:
    """The benchmark only ever talks to this machine; a typo must not aim load at a real cluster."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise SystemExit(f"--{what}: expected an http(s) URL, got {url!r}")
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback:
        raise SystemExit(f"--{what}: {url} is not a loopback address; this benchmark only runs against this machine")
    return url.rstrip("/")


async def _json(session: aiohttp.ClientSession, method: str, url: str, body: object = None) -> tuple[int, object]:
    """A setup call: a dict body is sent as JSON, a bytes body as NDJSON (`_bulk`); returns status and decoded body."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/x-ndjson" if isinstance(body, bytes) else "application/json"}
    async with session.request(method, url, data=data, headers=headers) as resp:
        text = await resp.read()
        return resp.status, (json.loads(text) if text else None)


async def ensure_scifact(upstream: str, index: str, data: Path) -> None:
    """Create `index` and bulk-load SciFact's corpus into it unless it already holds every document.

    Loading uses the documents' own ids, so an interrupted load simply runs again over the same ids."""
    docs = list(read_jsonl(data / "corpus.jsonl"))
    mapping = {
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"title": {"type": "text"}, "text": {"type": "text"}}},
    }
    try:
        await asyncio.to_thread(
            indexing.load_index, upstream, index, docs, body=mapping, chunk_docs=BULK_DOCS,
            source=lambda doc: {"title": doc.get("title", ""), "text": doc.get("text", "")},
            log=lambda message: print(message, file=sys.stderr),
        )
    except indexing.IndexingError as err:
        raise SystemExit(f"loading {index}: {err}") from None


async def sample_ids(session: aiohttp.ClientSession, upstream: str, index: str, seed: int) -> list[str]:
    body = {"size": ID_SAMPLE, "_source": False, "query": {"match_all": {}}}
    status, reply = await _json(session, "POST", f"{upstream}/{quote(index)}/_search", body)
    hits = reply.get("hits", {}).get("hits", []) if status == 200 and isinstance(reply, dict) else []
    ids = [hit["_id"] for hit in hits]
    if not ids:
        raise SystemExit(f"{index}: no documents to GET (HTTP {status})")
    random.Random(seed).shuffle(ids)
    return ids


async def index_uuid(session: aiohttp.ClientSession, base: str, index: str) -> str | None:
    status, reply = await _json(session, "GET", f"{base}/{quote(index)}/_settings")
    if status != 200 or not isinstance(reply, dict):
        return None
    return next(iter(reply.values()), {}).get("settings", {}).get("index", {}).get("uuid")


async def drain_model(
    session: aiohttp.ClientSession, proxy: str, index: str, doc_id: str, limit_s: float = 300
) -> bool:
    """Wait until every search queued at the proxy's model has been scored or dropped; False if it cannot tell.

    The probe is a one-hit reranked search (an `ids` query, its query text in `X-Rerank-Query`): the model takes
    jobs in order, so the probe comes back `reranked` only after everything queued before it has left the model.
    A probe that meets its own deadline behind the backlog falls back and is simply sent again."""
    body = json.dumps({"query": {"ids": {"values": [doc_id]}}}).encode()
    deadline = time.monotonic() + limit_s
    for probe in itertools.count():
        if time.monotonic() >= deadline:
            break
        # A new query text each time: the engine's score cache would answer a repeated probe without queueing it.
        headers = {"Content-Type": "application/json", "X-Rerank": "on", "X-Rerank-Query": f"drain probe {probe}"}
        async with session.post(f"{proxy}/{quote(index)}/_search", data=body, headers=headers) as resp:
            await resp.read()
            status = resp.headers.get("X-Rerank-Status", "")
        if status.startswith("reranked"):
            return True
        if not status.startswith(("fallback", "partial")):
            return False  # skipped: this proxy or config does not rerank the probe, so there is nothing to wait on
    return False


async def check_same_cluster(session: aiohttp.ClientSession, upstream: str, proxy: str, index: str) -> None:
    direct_uuid, proxied_uuid = await index_uuid(session, upstream, index), await index_uuid(session, proxy, index)
    if direct_uuid is None or direct_uuid != proxied_uuid:
        raise SystemExit(f"{index}: the proxy does not front this cluster (index uuid {direct_uuid} vs {proxied_uuid})")


async def rerank_status(session: aiohttp.ClientSession, proxy: str, search: Call) -> str:
    """The X-Rerank-Status the proxy gives `search` with `X-Rerank: on` (`reranked` when it is configured right)."""
    headers = {"Content-Type": "application/json", "X-Rerank": "on"}
    async with session.post(proxy + search.path, data=search.body, headers=headers) as resp:
        await resp.read()
        return resp.headers.get("X-Rerank-Status", "(no X-Rerank-Status header)")


# ---- report -----------------------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _rate(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}" if value < 10 else f"{value:.0f}"


def _ratio(num: float, den: float) -> str:
    if math.isnan(num) or math.isnan(den) or den == 0:
        return "n/a"
    ratio = num / den
    return f"{ratio:.3f}" if ratio < 0.1 else f"{ratio:.2f}" if ratio < 100 else f"{ratio:.0f}"


def _loadavg() -> str:
    """The 1-minute load average: on a shared machine, the context every number here needs."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def _cpu_us(stats: Stats) -> str:
    value = stats.cpu_us_per_request
    return "n/a" if math.isnan(value) else f"{value:.0f}"


def markdown_table(rows: Sequence[Row]) -> str:
    """One row per arm and concurrency against its case's direct arm; CPU also against nginx's in the same case."""
    nginx = {(row.group, row.concurrency): row.proxy for row in rows if row.kind == "nginx"}
    head = (
        "| case | conc | direct p50 ms | direct p99 ms | direct req/s | arm p50 ms | arm p99 ms | arm req/s "
        "| p50 ratio | thr ratio | CPU µs/req d/arm | CPU vs nginx | n d/arm | errors d/arm | arm X-Rerank-Status |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for row in rows:
        d, p = row.direct, row.proxy
        reference = nginx.get((row.group, row.concurrency))
        cpu_vs = _ratio(p.cpu_us_per_request, reference.cpu_us_per_request) if reference else "n/a"
        lines.append(
            f"| {row.case} | {row.concurrency} | {_ms(d.percentile(50))} | {_ms(d.percentile(99))} | "
            f"{_rate(d.throughput)} | {_ms(p.percentile(50))} | {_ms(p.percentile(99))} | {_rate(p.throughput)} | "
            f"{_ratio(p.percentile(50), d.percentile(50))} | {_ratio(p.throughput, d.throughput)} | "
            f"{_cpu_us(d)}/{_cpu_us(p)} | {cpu_vs} | "
            f"{len(d.latencies_ms)}/{len(p.latencies_ms)} | {d.errors}/{p.errors} | {percent_mix(p.statuses) or '-'} |"
        )
    return "\n".join(lines)


# ---- main -------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="the cluster, e.g. http://127.0.0.1:9200")
    parser.add_argument("--proxy", help="rerank-proxy in front of that same cluster")
    parser.add_argument("--serve-proxy", type=Path, metavar="CONFIG",
                        help="instead of --proxy: start `rerank-proxy serve --config CONFIG` on a free port")
    parser.add_argument("--nginx", action="store_true", help="add nginx (Debian package) as a reference arm")
    parser.add_argument("--haproxy", action="store_true", help="add HAProxy (Debian package) as a reference arm")
    parser.add_argument("--index", help=f"an existing index to use; default: create and load {DEFAULT_INDEX}")
    parser.add_argument("--field", default="text", help="field the match query searches (default: text)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR SciFact folder (corpus, queries)")
    parser.add_argument("--duration", type=float, help="measured seconds per cell (default 10, --quick 2)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds per arm first (default 2, --quick 0.5)")
    parser.add_argument("--concurrency", help="comma list of worker counts (default 1,16,64, --quick 1,16)")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds each cell's time is split into")
    parser.add_argument("--max-requests", type=int, default=200_000, help="request cap per cell")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    parser.add_argument("--cases", default="get,search,rerank", help="subset of get,search,rerank")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s cells, concurrency 1,16, 0.5 s warm-up")
    args = parser.parse_args(argv)
    # --quick changes the defaults only: explicit values still win.
    defaults = (2.0, 0.5, "1,16") if args.quick else (10.0, 2.0, "1,16,64")
    for name, default in zip(("duration", "warmup", "concurrency"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.upstream = check_loopback(args.upstream, "upstream")
    if (args.proxy is None) == (args.serve_proxy is None):
        parser.error("pass exactly one of --proxy URL and --serve-proxy CONFIG")
    if args.proxy is not None:
        args.proxy = check_loopback(args.proxy, "proxy")
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        parser.error("--concurrency: expected a comma list of integers")
    if not args.concurrency or not all(1 <= c <= 1024 for c in args.concurrency):
        parser.error("--concurrency: each value must be between 1 and 1024")
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--duration must be in (0, 600] and --warmup in [0, 60] seconds")
    if not 1 <= args.rounds <= 20 or args.max_requests < 1 or args.timeout <= 0:
        parser.error("--rounds must be 1..20, --max-requests and --timeout positive")
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(args.cases) - {"get", "search", "rerank"}
    if unknown or not args.cases:
        parser.error(f"--cases: unknown {', '.join(sorted(unknown)) or '(empty)'}")
    return args


@dataclass(frozen=True)
class Relay:
    """Something in front of the cluster: rerank-proxy or a reference relay."""

    label: str
    url: str
    pid: int | None  # None: its process could not be found, so its CPU is not measured
    kind: str


def _pid_of(url: str) -> int | None:
    port = urlsplit(url).port
    return anchors.listening_pid(port) if port else None


def start_relays(args: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack) -> tuple[Relay, list[Relay]]:
    """The proxy (started when `--serve-proxy`) and the reference relays asked for; `stack` stops what it started."""
    if args.serve_proxy is not None:
        launched = anchors.start_rerank_proxy(args.serve_proxy, args.upstream, workdir)
        stack.callback(launched.stop)
        proxy = Relay("rerank-proxy", launched.url, launched.process.pid, "proxy")
    else:
        proxy = Relay("rerank-proxy", args.proxy, _pid_of(args.proxy), "proxy")
    references = []
    for kind, start in (("nginx", anchors.start_nginx), ("haproxy", anchors.start_haproxy)):
        if not getattr(args, kind):
            continue
        binary = anchors.find_binary(kind)
        if binary is None:
            raise SystemExit(f"--{kind}: {kind} is not installed (Debian package `{kind}`)")
        relay = start(binary, args.upstream, workdir)
        stack.callback(relay.stop)
        references.append(Relay(anchors.binary_version(binary), relay.url, relay.process.pid, kind))
    return proxy, references


def reference_arms(references: Sequence[Relay], case: str, headers: dict[str, str]) -> list[Arm]:
    return [Arm(f"{case} ({r.label})", r.url, headers, pid=r.pid, kind=r.kind) for r in references]


async def main_async(args: argparse.Namespace, proxy: Relay, references: Sequence[Relay]) -> int:
    index = args.index or DEFAULT_INDEX
    queries = [q["text"] for q in read_jsonl(args.data / "queries.jsonl")]
    random.Random(args.seed).shuffle(queries)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        if args.index is None:
            await ensure_scifact(args.upstream, index, args.data)
        ids = await sample_ids(session, args.upstream, index, args.seed)
        searches = search_calls(index, args.field, queries)
        await check_same_cluster(session, args.upstream, args.proxy, index)
        status = await rerank_status(session, args.proxy, searches[0]) if "rerank" in args.cases else "reranked"
    if not status.startswith("reranked"):
        print(f"warning: the proxy answered X-Rerank-Status: {status} to a reranked search", file=sys.stderr)

    direct = Arm("direct", args.upstream, pid=_pid_of(args.upstream), kind="direct")
    cases = []
    if "get" in args.cases:
        arms = [direct, Arm("get (pass-through)", args.proxy, pid=proxy.pid), *reference_arms(references, "get", {})]
        cases.append(Case("get", get_calls(index, ids), arms))
    if "search" in args.cases:
        off = {"X-Rerank": "off"}  # the reference relays forward it; the cluster ignores it
        arms = [direct, Arm("search (X-Rerank: off)", args.proxy, off, pid=proxy.pid),
                *reference_arms(references, "search", off)]
        cases.append(Case("search", searches, arms))
    if "rerank" in args.cases:
        # Its own direct baseline, interleaved with it: the other cases stay free of the model's CPU load.
        rerank = Arm("rerank (X-Rerank: on)", args.proxy, {"X-Rerank": "on"}, uses_model=True,
                     pid=proxy.pid)
        cases.append(Case("rerank", searches, [direct, rerank]))

    rows: list[Row] = []
    started = time.perf_counter()
    load_before = _loadavg()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout)) as probe_session:

        async def drain() -> None:
            if not await drain_model(probe_session, args.proxy, index, ids[0]):
                print("note: could not confirm the proxy's model queue is empty", file=sys.stderr)

        if "rerank" in args.cases:
            await drain()  # the reranked search rerank_status() sent
        for concurrency in args.concurrency:
            for case in cases:
                print(f"{case.name} x {concurrency}", file=sys.stderr, flush=True)
                stats = await run_case(
                    case, concurrency, args.duration, args.warmup, args.rounds, args.max_requests, args.timeout, drain
                )
                rows += [Row(arm.label, concurrency, stats[0], s, case.name, arm.kind)
                         for arm, s in zip(case.arms[1:], stats[1:])]
    labels = [arm.label for case in cases for arm in case.arms[1:]]
    rows.sort(key=lambda r: (labels.index(r.case), r.concurrency))
    print(
        f"proxy overhead: index `{index}`, {HITS}-hit `match` on `{args.field}`, {args.duration:g} s per cell "
        f"in {args.rounds} ABBA rounds, warm-up {args.warmup:g} s, {len(queries)} queries, {len(ids)} doc ids; "
        f"{os.cpu_count()} CPUs, load average {load_before} at start, {_loadavg()} at end; "
        f"total {time.perf_counter() - started:.0f} s\n"
    )
    print(markdown_table(rows))
    print(
        "\nratios: arm p50 / direct p50 and arm req/s / direct req/s; the rerank rows compare with the same direct "
        "search, measured interleaved with them. CPU µs/req: user + system time of each side's process tree per "
        "successful request (direct: the cluster's; a reranked arm's includes its model work, drained after each "
        "round); CPU vs nginx: the arm's CPU per request over nginx's in the same case (goal for rerank-proxy: at "
        "most 2x; thr ratio at least 0.7). Latency percentiles cover successful (HTTP 200) requests only. "
        "A model that caches per document (the bi-encoder) speeds up as a proxy process sees more documents: start "
        "a fresh proxy for cold numbers."
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="proxy-overhead-") as scratch, contextlib.ExitStack() as stack:
        proxy, references = start_relays(args, Path(scratch), stack)
        args.proxy = proxy.url
        return asyncio.run(main_async(args, proxy, references))


if __name__ == "__main__":
    sys.exit(main())
