"""Interleaved experiments on simulated live traffic: does the verdict from clicks agree with offline NDCG@10?

    .venv/bin/python -m benchmarks.interleaving --upstream http://127.0.0.1:19201
    .venv/bin/python -m benchmarks.interleaving --upstream URL --sets scifact,medline --searches 2000

For each judged collection under ../shared/data, the corpus is indexed once (`interleaving-<set>`), and a real
proxy (in process, the eval's built-in CPU setup: MiniLM, window 100, linear fusion) runs one experiment on it:
`a` is `control`, BM25 (reranking is off by default in this config) and `b` the variant `reranked` (reranking on).

Offline: every judged query through the proxy once per side (`X-Rerank-Variant`), NDCG@10 of each.

Online: `--searches` searches, each a judged query drawn at random, each in a session of its own (`X-Opaque-Id`), so
each is interleaved with a coin of its own. A simulated user reads the served page of 10 (team-draft, or `--method
balanced`) top down under a cascade click model driven by the qrels: a document of grade g (of the set's highest
grade G) is clicked with probability 0.05 + 0.85 g / G, and after a click the user stops with probability 0.5. The
clicks go to `POST /_rerank_proxy/events` in NDJSON batches, as a log shipper would send them; every `--every`
searches the verdict is read from `GET /_rerank_proxy/experiments`, and the first search count at which the sign test
gives p < 0.01 is noted.

The table: per set, the offline NDCG@10 of each side and their difference, the experiment's searches, clicked
searches, wins of a and b, ties, the p-value at the end, the verdict (the side the clicks prefer when p < 0.05),
and the searches needed to reach p < 0.01. It exits 1 when a set's NDCG@10 difference exceeds 0.02 and the verdict
disagrees with it in sign, or when SciFact does not reach p < 0.01 within its searches.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from proxy.config import parse_config
from proxy.server import start_server
from rerank_proxy_tools.beir import Collection, load_collection
from rerank_proxy_tools.evaluate import (
    DEFAULT_WINDOW,
    REQUEST_TIMEOUT,
    _json,
    builtin_config,
    bulk_load,
    create_index,
    existing_index,
    index_body,
    score_run,
    searched_fields,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXPERIMENT = "bm25-vs-reranked"
PAGE = 10
P_CLICK_FLOOR, P_CLICK_SPAN, P_STOP = 0.05, 0.85, 0.5
SIGNIFICANT, DECISIVE = 0.01, 0.05
AGREEMENT_MARGIN = 0.02  # NDCG@10 differences above this must get a verdict of the same sign


@dataclass
class SetResult:
    name: str
    ndcg_a: float
    ndcg_b: float
    summary: dict[str, Any]
    needed: int | None  # searches until p < 0.01 first held; None: not within the run
    wall_s: float

    @property
    def delta(self) -> float:
        return self.ndcg_b - self.ndcg_a

    @property
    def verdict(self) -> str:
        if self.summary["p_value"] >= DECISIVE:
            return "none"
        return "a" if self.summary["wins_a"] > self.summary["wins_b"] else "b"

    @property
    def disagrees(self) -> bool:
        if abs(self.delta) <= AGREEMENT_MARGIN:
            return False
        return self.verdict != ("b" if self.delta > 0 else "a")


def experiment_config(upstream: str, method: str) -> Any:
    data: dict[str, Any] = builtin_config(upstream, DEFAULT_WINDOW)
    data["defaults"]["enabled"] = False  # control is the cluster's BM25 order
    data["variants"] = {"reranked": {"enabled": True}}
    data["experiments"] = {EXPERIMENT: {"a": "control", "b": "reranked", "method": method, "indices": ["*"]}}
    data["events"] = {"max_searches": 100_000}
    return parse_config(data, origin="interleaving benchmark")


def search_body(text: str, fields: list[str]) -> dict[str, Any]:
    return {"query": {"multi_match": {"query": text, "fields": fields}}, "size": PAGE, "_source": False}


def clicks(served: list[str], grades: dict[str, int], top_grade: int, rng: random.Random) -> list[str]:
    """The cascade click model: top down, a click with probability by grade, a stop after a click by P_STOP."""
    clicked = []
    for doc in served:
        grade = max(grades.get(doc, 0), 0)
        if rng.random() < P_CLICK_FLOOR + P_CLICK_SPAN * grade / top_grade:
            clicked.append(doc)
            if rng.random() < P_STOP:
                break
    return clicked


async def offline(http: aiohttp.ClientSession, url: str, collection: Collection, queries: dict[str, str],
                  fields: list[str]) -> tuple[float, float]:
    results = []
    for variant in ("control", "reranked"):
        hits: dict[str, dict[str, float]] = {}
        for qid, text in queries.items():
            async with http.post(url, json=search_body(text, fields), headers={"X-Rerank-Variant": variant}) as r:
                found = (await _json(r))["hits"]["hits"]
            hits[qid] = {hit["_id"]: float(len(found) - rank) for rank, hit in enumerate(found)}
        results.append(score_run(collection.qrels, hits, list(queries))[0]["ndcg@10"])
    return results[0], results[1]


async def online(http: aiohttp.ClientSession, url: str, admin: str, collection: Collection,
                 queries: dict[str, str], fields: list[str], args: argparse.Namespace) -> tuple[dict[str, Any], int | None]:
    top_grade = max(g for grades in collection.qrels.values() for g in grades.values())
    qids = list(queries)
    pending: list[bytes] = []
    needed = None
    limit = asyncio.Semaphore(args.concurrency)

    async def one(i: int) -> None:
        rng = random.Random(f"{args.seed}-{i}")  # a search's own draws: the same run whatever order replies come in
        qid = rng.choice(qids)
        headers = {"X-Opaque-Id": f"sim-{args.seed}-{i}"}
        async with limit, http.post(url, json=search_body(queries[qid], fields), headers=headers) as reply:
            document = await _json(reply)
            search_id = reply.headers.get("X-Rerank-Search-Id")
        if reply.status != 200 or search_id is None:
            raise RuntimeError(f"search {i}: {reply.status} {reply.headers.get('X-Rerank-Status')}: {document}")
        served = [hit["_id"] for hit in document["hits"]["hits"]]
        pending.extend(orjson.dumps({"search_id": search_id, "doc_id": doc, "type": "click"})
                       for doc in clicks(served, collection.qrels.get(qid, {}), top_grade, rng))

    async def verdict() -> dict[str, Any]:
        if pending:
            batch = b"\n".join(pending)
            pending.clear()
            async with http.post(f"{admin}/_rerank_proxy/events", data=batch) as reply:
                if reply.status != 200:
                    raise RuntimeError(f"events: {reply.status} {await reply.text()}")
        async with http.get(f"{admin}/_rerank_proxy/experiments") as reply:
            summary: dict[str, Any] = (await _json(reply))["experiments"][EXPERIMENT]
        return summary

    done = 0
    while done < args.searches:
        step = min(args.every, args.searches - done)
        await asyncio.gather(*(one(done + i) for i in range(step)))
        done += step
        summary = await verdict()
        if needed is None and summary["clicked_searches"] and summary["p_value"] < SIGNIFICANT:
            needed = summary["searches"]
    return summary, needed


async def bench_set(http: aiohttp.ClientSession, upstream: str, name: str, args: argparse.Namespace) -> SetResult:
    collection = load_collection(DATA / name)
    index = "interleaving-" + name.replace("/", "-")
    if not await existing_index(upstream, index, len(collection.doc_ids)):
        await create_index(upstream, index, index_body(None, args.analyzer))
        await bulk_load(upstream, index, collection, structured=False)
    fields = await searched_fields(http, upstream, index)
    queries = collection.judged_queries(args.max_queries)
    started = time.perf_counter()
    serving = await start_server(experiment_config(upstream, args.method))
    try:
        url = f"{serving.url}/{quote(index)}/_search"
        ndcg_a, ndcg_b = await offline(http, url, collection, queries, fields)
        log(f"{name}: {len(queries)} judged queries, NDCG@10 control {ndcg_a:.4f}, reranked {ndcg_b:.4f}")
        summary, needed = await online(http, url, serving.admin_url, collection, queries, fields, args)
    finally:
        await serving.cleanup()
    result = SetResult(name, ndcg_a, ndcg_b, summary, needed, time.perf_counter() - started)
    log(f"  {summary['searches']} searches, wins a/b {summary['wins_a']}/{summary['wins_b']}, "
        f"p {summary['p_value']:.2g}, p<0.01 after {needed}, {result.wall_s:.0f} s")
    return result


def markdown(results: list[SetResult]) -> str:
    lines = ["| set | NDCG@10 BM25 (a) | reranked (b) | Δ | searches | clicked | wins a | wins b | ties | p | "
             "verdict | searches to p < 0.01 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in results:
        s = r.summary
        flag = " **disagrees**" if r.disagrees else ""
        lines.append(f"| {r.name} | {r.ndcg_a:.4f} | {r.ndcg_b:.4f} | {r.delta:+.4f} | {s['searches']:,} | "
                     f"{s['clicked_searches']:,} | {s['wins_a']:,} | {s['wins_b']:,} | {s['ties']:,} | "
                     f"{s['p_value']:.1e} | {r.verdict}{flag} | {r.needed if r.needed is not None else '–'} |")
    return "\n".join(lines)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--sets", default="scifact,medline,cranfield,vaswani", help="collections under ../shared/data")
    parser.add_argument("--searches", type=int, default=2000, help="simulated searches per set")
    parser.add_argument("--every", type=int, default=50, help="searches between two reads of the verdict")
    parser.add_argument("--method", default="team-draft", choices=["team-draft", "balanced"])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-queries", type=int, default=None, help="the first N judged queries of each set")
    parser.add_argument("--analyzer", default="standard", help="the index's analyzer (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    upstream = args.upstream.rstrip("/")
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as http:
        results = [await bench_set(http, upstream, name, args) for name in args.sets.split(",")]
    print(markdown(results))
    failed = [r.name for r in results if r.disagrees]
    failed += [r.name for r in results if r.name == "scifact" and r.needed is None]
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
