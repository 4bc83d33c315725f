"""Search quality as the model's time runs short: NDCG@10 through the real proxy, budget by budget, never below BM25.

    .venv/bin/python -m benchmarks.degradation --upstream http://127.0.0.1:19201      # OpenSearch: english analyzer
    .venv/bin/python -m benchmarks.degradation --upstream URL --sets medline --max-queries 20 --concurrency 1,8

For each collection (SciFact and Medline from ../shared/data by default) the corpus is indexed once (index
`degradation-<set>`, the `english` analyzer: OpenSearch's analysis-common has it, the Elasticsearch integ-test-zip
does not; `--analyzer standard` there), then the judged queries run through an in-process proxy with the eval's
built-in configuration (`rerank_proxy_tools/evaluate.py`: MiniLM on this CPU, window 100, the shipped defaults; the README's table
was measured when they were title + text and linear fusion 0.5):

- `bm25`: `X-Rerank: off`, the baseline;
- `full`: reranked with all the time it needs (the eval's own timeout), one search at a time. Its median
  `X-Rerank-Took-Ms` is what a full rerank of the window takes on this machine, T;
- `budget P%`: the same with the model's budget (`timeout_ms`) at P% of T, one search at a time (0% is 1 ms: the
  config's least);
- `conc C`: C searches in flight at once with the default budget (`RerankSettings.timeout_ms`).

Every row has a proxy of its own, and the model keeps no document embeddings across searches (`cache_entries: 0`;
the score cache never hits, each query runs once a row): every search costs what scoring its window costs, not
less for documents an earlier search of the row happened to embed, so T means the same for every search and every
row. The circuit breaker is off unless `--circuit`: it turns a run of partial searches into fallbacks (the
cluster's order), which would hide what a partial result serves. The table flags a row more than TOLERANCE below
BM25, and a budget row below the one with the next smaller budget. Status counts are the first word of
`X-Rerank-Status` (reranked, partial, fallback), `K` the mean `reranked=K` of the partial searches.

A budget row may fall below a smaller budget's without anything being lost: a partial result with K hits reranked
is what a full rerank of a window of K serves, so the budget rows follow the model's own NDCG-by-window curve,
which need not rise all the way to the window (`rerank-proxy eval --window K` gives its points).

The loading, the proxy, the query bodies and the scoring are `rerank_proxy_tools/evaluate.py`'s own.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from proxy.config import Config, RerankSettings, parse_config
from proxy.server import start_server
from rerank_proxy_tools.beir import Collection, load_collection
from rerank_proxy_tools.evaluate import (
    DEFAULT_WINDOW,
    EVAL_TIMEOUT_MS,
    REQUEST_TIMEOUT,
    RUN_BM25,
    RUN_RERANKED,
    _json,
    builtin_config,
    bulk_load,
    check_analyzer,
    create_index,
    existing_index,
    hits_per_search,
    index_body,
    run_headers,
    score_run,
    search_body,
    searched_fields,
    status_kind,
)

REPO = Path(__file__).resolve().parents[1]

DATA = REPO.parent / "shared" / "data"
TOLERANCE = 0.002  # NDCG@10 a row may lose to BM25 before it is flagged
FRACTIONS = (0.75, 0.5, 0.25, 0.1, 0.0)  # of T, after the full row
DEFAULT_TIMEOUT_MS = RerankSettings.model_fields["timeout_ms"].default
_PARTIAL = re.compile(r"reranked=(\d+)")


@dataclass
class Row:
    name: str
    budget_ms: float | None  # None: BM25 (no model)
    concurrency: int
    ndcg: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    partial_k: list[int] = field(default_factory=list)
    took_ms: list[float] = field(default_factory=list)  # X-Rerank-Took-Ms of the reranked searches
    wall_s: float = 0.0
    flags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Dataset:
    collection: Collection
    queries: dict[str, str]
    index: str
    fields: list[str]


def row_config(upstream: str, timeout_ms: int, circuit: bool) -> Config:
    """The eval's built-in configuration with the model's budget at `timeout_ms`, no embedding cache (and its
    breaker off, unless `circuit`)."""
    data: dict[str, Any] = builtin_config(upstream, DEFAULT_WINDOW)
    data["defaults"]["timeout_ms"] = timeout_ms
    for name, spec in data["models"].items():
        data["models"][name] = spec = {**spec, "cache_entries": 0}
        if not circuit:
            spec["circuit"] = {"enabled": False}
    return parse_config(data, origin="degradation benchmark")


async def prepare(http: aiohttp.ClientSession, upstream: str, name: str, analyzer: str,
                  max_queries: int | None) -> Dataset:
    collection = load_collection(DATA / name)
    index = "degradation-" + name.replace("/", "-")
    if not await existing_index(upstream, index, len(collection.doc_ids)):
        await check_analyzer(http, upstream, analyzer)
        await create_index(upstream, index, index_body(None, analyzer))
        await bulk_load(upstream, index, collection, structured=False)
    return Dataset(collection, collection.judged_queries(max_queries), index,
                   await searched_fields(http, upstream, index))


async def run_row(http: aiohttp.ClientSession, proxy: str, data: Dataset, row: Row, run: str) -> None:
    """Every judged query through `proxy`, `row.concurrency` at a time; fills in the row."""
    url = f"{proxy}/{quote(data.index)}/_search"
    limit = asyncio.Semaphore(row.concurrency)
    hits: dict[str, dict[str, float]] = {}
    size = hits_per_search([DEFAULT_WINDOW])

    async def one(qid: str, text: str) -> None:
        async with limit:
            async with http.post(url, json=search_body(text, data.fields, size), headers=run_headers(run)) as reply:
                document = await _json(reply)
                status = reply.headers.get("X-Rerank-Status", "")
                took = reply.headers.get("X-Rerank-Took-Ms")
        if reply.status != 200:
            raise RuntimeError(f"{row.name}, query {qid}: the proxy answered {reply.status}: {document}")
        found = document["hits"]["hits"]
        hits[qid] = {hit["_id"]: float(len(found) - rank) for rank, hit in enumerate(found)}
        row.statuses[status_kind(status)] += 1
        if (k := _PARTIAL.search(status)) is not None:
            row.partial_k.append(int(k.group(1)))
        if took is not None:
            row.took_ms.append(float(took))

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for qid, text in data.queries.items():
            group.create_task(one(qid, text))
    row.wall_s = time.perf_counter() - started
    means, _ = score_run(data.collection.qrels, hits, list(data.queries))
    row.ndcg = means["ndcg@10"]


async def with_proxy(http: aiohttp.ClientSession, upstream: str, data: Dataset, row: Row, circuit: bool) -> Row:
    assert row.budget_ms is not None
    serving = await start_server(row_config(upstream, max(1, round(row.budget_ms)), circuit))
    try:
        await run_row(http, serving.url, data, row, RUN_RERANKED)
    finally:
        await serving.cleanup()
    log(f"  {row.name}: NDCG@10 {row.ndcg:.4f}, {dict(row.statuses)}, {row.wall_s:.0f} s")
    return row


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def bench_set(http: aiohttp.ClientSession, upstream: str, name: str, args: argparse.Namespace) -> list[Row]:
    data = await prepare(http, upstream, name, args.analyzer, args.max_queries)
    log(f"{name}: {len(data.queries)} judged queries, index {data.index}")
    full = await with_proxy(http, upstream, data, Row("full", EVAL_TIMEOUT_MS, 1), args.circuit)
    full_ms = statistics.median(full.took_ms)
    full.name = f"full (T = {full_ms:,.0f} ms)"
    bm25 = Row(RUN_BM25, None, 1)
    serving = await start_server(row_config(upstream, DEFAULT_TIMEOUT_MS, args.circuit))  # bm25 never asks the model
    try:
        await run_row(http, serving.url, data, bm25, RUN_BM25)
    finally:
        await serving.cleanup()
    log(f"  bm25: NDCG@10 {bm25.ndcg:.4f}")
    budgets = [full]
    for fraction in args.fractions:
        budgets.append(await with_proxy(http, upstream, data, Row(f"budget {fraction:.0%}", fraction * full_ms, 1),
                                        args.circuit))
    concurrent = [await with_proxy(http, upstream, data, Row(f"conc {c}", DEFAULT_TIMEOUT_MS, c), args.circuit)
                  for c in args.concurrency]
    for row in [*budgets, *concurrent]:
        if row.ndcg < bm25.ndcg - TOLERANCE:
            row.flags.append(f"below BM25 by {bm25.ndcg - row.ndcg:.4f}")
    by_budget = sorted(budgets, key=lambda row: row.budget_ms or 0.0)
    for smaller, larger in zip(by_budget, by_budget[1:]):
        if larger.ndcg < smaller.ndcg:
            larger.flags.append(f"below {smaller.name} by {smaller.ndcg - larger.ndcg:.4f}")
    if not args.keep:
        async with http.delete(f"{upstream}/{quote(data.index)}") as reply:
            reply.raise_for_status()
    return [bm25, *by_budget[::-1], *concurrent]


def markdown(results: dict[str, list[Row]]) -> str:
    lines = ["| set | run | model budget | searches at once | NDCG@10 | Δ vs BM25 | reranked / partial / fallback "
             "| mean K of partial | flag |", "|---|---|---:|---:|---:|---:|---|---:|---|"]
    for name, rows in results.items():
        base = rows[0].ndcg
        for row in rows:
            budget = "–" if row.budget_ms is None else f"{max(1, round(row.budget_ms)):,} ms"
            counts = "–" if row.budget_ms is None else " / ".join(
                str(row.statuses[kind]) for kind in ("reranked", "partial", "fallback"))
            k = f"{statistics.mean(row.partial_k):.1f}" if row.partial_k else "–"
            delta = "" if row.budget_ms is None else f"{row.ndcg - base:+.4f}"
            flag = "**" + "; ".join(row.flags) + "**" if row.flags else ""
            lines.append(f"| {name} | {row.name} | {budget} | {row.concurrency} | {row.ndcg:.4f} | {delta} | "
                         f"{counts} | {k} | {flag} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="the cluster (OpenSearch for its english analyzer)")
    parser.add_argument("--sets", default="scifact,medline", help="collections under ../shared/data")
    parser.add_argument("--analyzer", default="english", help="the index's analyzer (default %(default)s)")
    parser.add_argument("--max-queries", type=int, default=None, help="the first N judged queries of each set")
    parser.add_argument("--fractions", default=",".join(map(str, FRACTIONS)),
                        type=lambda text: [float(f) for f in text.split(",") if f],
                        help="budgets after the full row, as fractions of T (default %(default)s)")
    parser.add_argument("--concurrency", default="1,8,32", type=lambda text: [int(c) for c in text.split(",") if c],
                        help="searches in flight for the default-budget rows (default %(default)s)")
    parser.add_argument("--circuit", action="store_true", help="keep the model's circuit breaker on")
    parser.add_argument("--keep", action="store_true", help="keep the indices (a next run reuses them)")
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    upstream = args.upstream.rstrip("/")
    started = time.perf_counter()
    results = {}
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as http:
        for name in args.sets.split(","):
            results[name] = await bench_set(http, upstream, name, args)
    log(f"done in {time.perf_counter() - started:.0f} s")
    print(markdown(results))
    return 1 if any(row.flags for rows in results.values() for row in rows) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
