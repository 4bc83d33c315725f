"""The batching engine under concurrent searches vs the backend called directly, one search after another.

    .venv/bin/python -m benchmarks.engine                    # default, about 4-5 minutes on a 2-core CPU
    .venv/bin/python -m benchmarks.engine --quick            # smoke run, well under a minute
    .venv/bin/python -m benchmarks.engine --minilm-docs 100  # MiniLM at full size too (about 12 minutes here)

Models (`--models`): `minilm`, the trained all-MiniLM-L6-v2 bi-encoder (CPU default of the proxy); `minilm-ce`,
MiniLM-L6 under a random head (`rerank_proxy_tools/models.py: make_minilm_cross_encoder`, the cost of ms-marco-MiniLM-L-6-v2);
`tiny-ce`, a tiny random cross-encoder (`make_tiny_cross_encoder`, 2 layers, hidden 32: costs little besides
tokenizing and padding). Rows per model:

- `direct xN`: N searches scored one after another with the backend's own `score(query, docs)` in a model thread,
  as the engine before batching served N searches that arrive together; each latency counts from when all N
  arrived.
- `engine cC`: C searches sent to the engine at once (`ScoringEngine.score`); latency from sending to scores.

Each search is a SciFact query (queries.jsonl, file order) with documents of its own (corpus in a fixed shuffled
order, sliced so no two engine searches share a document), text = title + text cut to `--doc-tokens` pieces as the
proxy cuts it (`build_document_text`). The engine's score cache is off (`score_cache_entries: 0`). The bi-encoder
keeps its embedding cache, as it runs in the proxy; no query or document repeats (until the corpus runs out), so it
only saves re-embedding a search's query for each of its micro-batches, as in production. Fill = real tokens / padded tokens (longest pair x
pairs, per model call), by the sizes the engine cuts by (the exact lengths of the backend's encoded pairs; for the
bi-encoder that is the document's); the direct rows show the same for the backend's own calls, which are
length-sorted and cut by the same `max_batch_tokens`.
The output ends with a markdown table.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: nothing comes from the hub here

from prometheus_client import REGISTRY

from rerank.backend import PairEncoder
from rerank.batching import token_batches
from rerank.engine import PAIR_SPECIAL_TOKENS, ScoringEngine
from rerank.registry import load_scorer
from rerank.spec import BiEncoderSpec, CrossEncoderSpec, ModelSpec
from rerank.text import TextConfig, build_document_text
from rerank_proxy_tools.models import MINILM_SOURCE, make_minilm_cross_encoder, make_tiny_cross_encoder

REPO = Path(__file__).resolve().parents[1]

DEFAULT_DATA = REPO.parent / "shared" / "data" / "scifact"
TIMEOUT_S = 3600.0  # the benchmark measures the model, never a deadline


@dataclass(frozen=True)
class Search:
    query: str
    docs: list[str]


@dataclass
class Row:
    model: str
    mode: str
    searches: int
    docs: int
    wall_s: float
    latencies: list[float]
    fill: float | None
    waste: float | None
    calls: int

    def cells(self) -> list[str]:
        pairs = self.searches * self.docs
        return [
            self.model, self.mode, str(self.searches), str(self.docs), f"{self.wall_s:.2f}",
            f"{self.searches / self.wall_s:.2f}", f"{pairs / self.wall_s:.0f}",
            f"{percentile(self.latencies, 0.5) * 1000:.0f}", f"{percentile(self.latencies, 0.99) * 1000:.0f}",
            "-" if self.fill is None else f"{self.fill:.2f}", "-" if self.waste is None else f"{self.waste:.0%}",
            str(self.calls),
        ]


HEADER = ["model", "mode", "searches", "docs/search", "wall s", "searches/s", "pairs/s", "p50 ms", "p99 ms",
          "mean fill", "padding waste", "model calls"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank: with few samples, p99 is the slowest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class Searches:
    """Hands out searches with documents nobody got before (wrapping around only when the corpus runs out)."""

    def __init__(self, data: Path, doc_tokens: int) -> None:
        config = TextConfig(fields=["title", "text"], max_tokens=doc_tokens)
        corpus = _jsonl(data / "corpus.jsonl")
        random.Random(0).shuffle(corpus)
        self.texts = [build_document_text({"title": d.get("title") or "", "text": d.get("text") or ""}, config)
                      for d in corpus]
        self.queries = [q["text"] for q in _jsonl(data / "queries.jsonl")]
        self._next_doc = self._next_query = 0

    def take(self, count: int, docs: int) -> list[Search]:
        searches = []
        for _ in range(count):
            picked = [self.texts[(self._next_doc + i) % len(self.texts)] for i in range(docs)]
            self._next_doc += docs
            searches.append(Search(self.queries[self._next_query % len(self.queries)], picked))
            self._next_query += 1
        return searches


# --- metrics the engine records (process-wide Prometheus registry) -------------------------------------------------
def engine_counters(model: str) -> dict[str, float]:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"model": model, **labels}) or 0.0

    return {
        "real": sample("rerank_batch_tokens_total", kind="real"),
        "padding": sample("rerank_batch_tokens_total", kind="padding"),
        "fill_sum": sample("rerank_batch_fill_ratio_sum"),
        "calls": sample("rerank_batch_fill_ratio_count"),
        "hits": sample("rerank_score_cache_total", result="hit"),
    }


def pair_tokens(scorer: Any, query: str, docs: Sequence[str]) -> list[int]:
    """The sizes the engine cuts these pairs by: a local backend's encodings, else the count estimate."""
    if isinstance(scorer, PairEncoder):
        return [pair.tokens for pair in scorer.encode_pairs([query] * len(docs), docs)]
    cap = getattr(scorer, "max_length", None) or 10**9
    q, *counts = scorer.count_tokens([query, *docs])
    return [min(q + d + PAIR_SPECIAL_TOKENS, cap) for d in counts]


def direct_fill(scorer: Any, searches: Sequence[Search], batch_size: int) -> tuple[float, float, int]:
    """(mean fill, padding waste, calls) of the backend's own calls (length-sorted, cut by its token budget), by the
    engine's token estimate."""
    fills, real, padded, calls = [], 0, 0, 0
    for search in searches:
        tokens = pair_tokens(scorer, search.query, search.docs)
        for rows in token_batches(tokens, batch_size, scorer.max_batch_tokens):
            batch = [tokens[i] for i in rows]
            fills.append(sum(batch) / (len(batch) * max(batch)))
            real, padded, calls = real + sum(batch), padded + len(batch) * max(batch), calls + 1
    return sum(fills) / len(fills), 1 - real / padded, calls


# --- the runs ---------------------------------------------------------------------------------------------------
async def run_direct(model: str, scorer: Any, searches: list[Search], batch_size: int) -> Row:
    """One `score` call per search in a model thread of its own, as the engine before batching ran them."""
    fill, waste, calls = direct_fill(scorer, searches, batch_size)  # before scoring fills the embedding cache
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1, thread_name_prefix="direct") as thread:
        await loop.run_in_executor(thread, scorer.score, "warm up", ["warm up"])
        started = time.perf_counter()
        latencies = []
        for search in searches:
            await loop.run_in_executor(thread, scorer.score, search.query, search.docs)
            latencies.append(time.perf_counter() - started)
        wall = time.perf_counter() - started
    return Row(model, f"direct x{len(searches)}", len(searches), len(searches[0].docs), wall, latencies, fill, waste,
               calls)


async def run_engine(model: str, engine: ScoringEngine, searches: list[Search]) -> Row:
    before = engine_counters(model)
    started = time.perf_counter()

    async def one(search: Search) -> float:
        scores = await engine.score(model, search.query, search.docs, TIMEOUT_S)
        assert None not in scores
        return time.perf_counter() - started

    latencies = list(await asyncio.gather(*(one(search) for search in searches)))
    wall = time.perf_counter() - started
    after = engine_counters(model)
    delta = {key: after[key] - before[key] for key in after}
    if delta["hits"]:
        log(f"warning: {model}: {delta['hits']:.0f} score cache hits; the cache should be off")
    fill = delta["fill_sum"] / delta["calls"] if delta["calls"] else None
    tokens = delta["real"] + delta["padding"]
    waste = delta["padding"] / tokens if tokens else None
    return Row(model, f"engine c{len(searches)}", len(searches), len(searches[0].docs), wall, latencies, fill, waste,
               int(delta["calls"]))


async def bench_model(model: str, spec: ModelSpec, source: Searches, docs: int, levels: list[int],
                      sequential: int) -> list[Row]:
    log(f"{model}: loading {spec.source}")
    scorer = load_scorer(model, spec)
    engine = ScoringEngine({model: spec}, loader=lambda _name, _spec: scorer)  # one copy of the weights
    await engine.start()
    assert engine.states() == {model: "ready"}, engine.states()
    warm = source.take(1, min(docs, 8))[0]
    scorer.score(warm.query, warm.docs)
    await engine.score(model, warm.query, warm.docs[::-1], TIMEOUT_S)
    rows = []
    for level in levels:
        log(f"{model}: engine, {level} concurrent searches x {docs} documents")
        rows.append(await run_engine(model, engine, source.take(level, docs)))
        if level == max(levels) and sequential:
            # next to the biggest engine level, so drift on a shared machine hits both alike
            log(f"{model}: direct, {sequential} searches one after another")
            direct = await run_direct(model, scorer, source.take(sequential, docs), scorer.batch_size)
            rows.insert(len(rows) - 1, direct)
    await engine.close()
    return rows


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SciFact in BEIR format (default: %(default)s)")
    parser.add_argument("--models", default="minilm,minilm-ce,tiny-ce", help="comma list of %(default)s")
    parser.add_argument("--levels", default="1,8,32", help="concurrent searches per engine run (default %(default)s)")
    parser.add_argument("--sequential", type=int, default=32, help="searches in the direct row (default %(default)s)")
    parser.add_argument("--docs", type=int, default=100, help="documents per search (default %(default)s)")
    parser.add_argument("--minilm-docs", type=int, default=25,
                        help="documents per search for MiniLM (default %(default)s: ~0.1 s per document on a 2-core "
                        "CPU, 100 would take ~12 minutes)")
    parser.add_argument("--doc-tokens", type=int, default=128, help="document text budget in pieces (default "
                        "%(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="model batch size, both sides (default %(default)s)")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="padded tokens per model call, engine "
                        "and backend (default: the device's, see BaseSpec.batch_tokens)")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="engine: batching wait (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: levels 1,4, 4 sequential, 10 documents")
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.sequential, args.docs, args.minilm_docs = "1,4", 4, 10, 10
    return args


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    levels = [int(level) for level in args.levels.split(",")]
    source = Searches(args.data, args.doc_tokens)
    knobs = dict(batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms)
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            if model == "minilm":
                spec = BiEncoderSpec(source=MINILM_SOURCE, score_cache_entries=0, **knobs)
                rows += await bench_model(model, spec, source, args.minilm_docs, levels, args.sequential)
            elif model in ("minilm-ce", "tiny-ce"):
                make = make_minilm_cross_encoder if model == "minilm-ce" else make_tiny_cross_encoder
                folder = make(Path(tmp) / model)
                spec = CrossEncoderSpec(source=str(folder), score_cache_entries=0, **knobs)
                rows += await bench_model(model, spec, source, args.minilm_docs if model == "minilm-ce" else args.docs,
                                          levels, args.sequential)
            else:
                raise SystemExit(f"unknown model {model!r} (known: minilm, minilm-ce, tiny-ce)")
    import torch

    log(f"done in {time.perf_counter() - started:.0f}s (torch threads: {torch.get_num_threads()}, "
        f"cpus: {os.cpu_count()})")
    print(markdown(rows))


if __name__ == "__main__":
    asyncio.run(main())
