"""What the rerank API costs: pairs/s through `POST /v1/rerank` against calling the same backend directly.

    .venv/bin/python -m benchmarks.rerank_api                      # the shipped MiniLM and a tiny cross-encoder
    .venv/bin/python -m benchmarks.rerank_api --calls 40 --docs 100 --rounds 5

The defaults are sized for a 2-core CPU, where MiniLM-L6 reads about 25 pairs of 128 tokens a second (some 0.3
TFLOP per 100 such pairs): 10 calls of 20 documents per side and round, a few minutes in all.

Each call is one SciFact query against `--docs` documents of SciFact's corpus (a different slice per call), so
neither the engine's score cache nor the bi-encoder's embedding cache (both off here) can answer for the model.
The direct side loads the same model spec a second time and calls `scorer.score(query, docs)` one call after
another on a thread, as a library user would. The API side is a real proxy in process (its admin listener) called
over HTTP by aiohttp: one call at a time, then `--concurrency` at once, which the engine may batch together.
Rounds alternate direct and API, so a slow drift of the shared machine hits both. The goal: the API within 10% of
direct on the CPU models.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy.config import parse_config
from proxy.server import start_server
from rerank.registry import load_scorer
from rerank_proxy_tools.beir import iter_corpus, read_queries
from rerank_proxy_tools.models import MINILM_SOURCE, make_tiny_cross_encoder

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "scifact"
UNCACHED = {"score_cache_entries": 0, "max_wait_ms": 0}


def model_specs(tiny_dir: Path) -> dict[str, dict[str, Any]]:
    return {
        "minilm": {"backend": "bi-encoder", "source": MINILM_SOURCE, "max_length": 128, "cache_entries": 0,
                   **UNCACHED},
        "tiny-cross-encoder": {"backend": "cross-encoder", "source": str(tiny_dir), "max_length": 128, **UNCACHED},
    }


def workload(calls: int, docs: int) -> list[tuple[str, list[str]]]:
    queries = list(read_queries(DATA / "queries.jsonl").values())
    texts = [f"{d.get('title', '')}\n{d.get('text', '')}".strip() for d in iter_corpus(DATA / "corpus.jsonl")]
    return [(queries[i % len(queries)], texts[(i * docs) % (len(texts) - docs):][:docs]) for i in range(calls)]


async def timed(work: list[tuple[str, list[str]]], concurrency: int,
                one: Callable[[str, list[str]], Awaitable[None]]) -> float:
    """Pairs per second of `work` done `concurrency` calls at a time."""
    queue = list(reversed(work))

    async def worker() -> None:
        while queue:
            query, docs = queue.pop()
            await one(query, docs)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sum(len(d) for _, d in work) / (time.perf_counter() - started)


async def bench_model(name: str, spec: dict[str, Any], work: list[tuple[str, list[str]]],
                      args: argparse.Namespace) -> list[str]:
    config = parse_config({"listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"}, "models": {name: spec},
                           "rerank_api": {"max_documents": max(1000, args.docs), "timeout_ms": 600_000}})
    scorer = await asyncio.to_thread(load_scorer, name, config.models[name])
    serving = await start_server(config)
    url = f"{serving.admin_url}/v1/rerank"
    try:
        async with aiohttp.ClientSession() as http:
            async def api(query: str, docs: list[str]) -> None:
                body = orjson.dumps({"model": name, "query": query, "documents": docs})
                async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as reply:
                    assert reply.status == 200, await reply.text()
                    await reply.read()

            async def direct(query: str, docs: list[str]) -> None:
                await asyncio.to_thread(scorer.score, query, docs)

            await timed(work[:2], 1, api)  # warm both paths: first calls pay for lazy set-up
            await timed(work[:2], 1, direct)
            rates: dict[str, list[float]] = {"direct": [], "api": [], "api-concurrent": []}
            for _ in range(args.rounds):
                rates["direct"].append(await timed(work, 1, direct))
                rates["api"].append(await timed(work, 1, api))
                rates["api-concurrent"].append(await timed(work, args.concurrency, api))
    finally:
        await serving.cleanup()
    base = statistics.median(rates["direct"])
    rows = []
    for side, label in (("direct", "backend directly, 1 call at a time"), ("api", "`/v1/rerank`, 1 in flight"),
                        ("api-concurrent", f"`/v1/rerank`, {args.concurrency} in flight")):
        rate = statistics.median(rates[side])
        rows.append(f"| {name} | {label} | {rate:,.0f} | {rate / base:.2f} |")
    return rows


async def main(args: argparse.Namespace) -> None:
    work = workload(args.calls, args.docs)
    with tempfile.TemporaryDirectory() as tmp:
        specs = model_specs(make_tiny_cross_encoder(Path(tmp) / "tiny-ce"))
        rows: list[str] = []
        for name in args.models.split(","):
            rows += await bench_model(name, specs[name], work, args)
    print(f"\n{args.calls} calls x {args.docs} documents per round, median of {args.rounds} rounds\n")
    print("| model | path | pairs/s | vs direct |")
    print("|---|---|---:|---:|")
    print("\n".join(rows))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,tiny-cross-encoder")
    parser.add_argument("--calls", type=int, default=10, help="calls per round and path")
    parser.add_argument("--docs", type=int, default=20, help="documents per call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
