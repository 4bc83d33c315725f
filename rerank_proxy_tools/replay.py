"""`rerank-proxy replay CAPTURE... --config candidate.yaml`: judge a candidate configuration on captured traffic
before it serves anyone.

Each captured search (a `search` record of the capture log, `proxy/capture.py`) is scored again as the candidate
config would score it: its settings for the search's index (or `--variant`), its model, through the same engine,
over the same window, fused with the same cluster scores. The texts come from the capture when it holds them
(`capture.documents: true`: the texts the served model read), else, or with `--fetch`, from the cluster (`_mget`
of the window's ids, built by the candidate's own text config).

Reported against what was served:
- rank change per search: overlap@10, Kendall's tau and rank-biased overlap of the window orders (means, and the
  searches that changed most);
- the candidate's latency percentiles and its fallback rate (a search it could not score is its cluster order);
- the predicted interleaving preference from the captured clicks: for each search with clicks, the served and the
  candidate order are team-draft interleaved with the search's own seed and the clicks credited on the top 10 of
  that list, as a live experiment between the two would have credited them if users had clicked the same
  documents (a counterfactual estimate: it cannot know of clicks on documents nobody was shown), with a sign test;
- NDCG@10 and MRR@10 of both orders where `--qrels` and `--queries` map captured query texts to judgments.
A table on stdout, everything per search with `--json`, a per-search change chart with `--plot`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy.agreement import Agreement, agreement
from proxy.config import Config, RerankSettings, load_config
from proxy.experiment_stats import ExperimentTally, summarize
from proxy.interleaving import search_seed, team_draft
from rerank.engine import ScoringEngine
from rerank.ranking import rank
from rerank.text import build_document_text

from .beir import read_qrels, read_queries
from .evaluate import score_run

PAGE = 10


class ReplayError(RuntimeError):
    pass


@dataclass
class CapturedSearch:
    search_id: str
    index: str | None
    query: str
    keys: list[tuple[str | None, str]]  # the window's (_index, _id)
    cluster_scores: list[float | None]
    served: list[int]  # window positions, in the order served
    status: str
    documents: list[str] | None
    clicked: set[int] = field(default_factory=set)  # window positions clicked


@dataclass
class Replayed:
    search: CapturedSearch
    order: list[int]
    status: str  # the candidate's: reranked, partial, fallback
    took_ms: float
    agreement: Agreement


def read_capture(paths: Iterable[Path]) -> tuple[list[CapturedSearch], dict[str, int]]:
    """The captured searches with their clicks joined on search id, and what was left out and why."""
    searches: dict[str, CapturedSearch] = {}
    skipped = {"hashed-query": 0, "no-window": 0}
    events: list[dict[str, Any]] = []
    for path in paths:
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise ReplayError(f"{path}:{number}: not a JSON line") from None
                kind = record.get("type")
                if kind == "event":
                    events.append(record)
                elif kind == "search":
                    if "query" not in record:
                        skipped["hashed-query"] += 1
                    elif not record.get("window"):
                        skipped["no-window"] += 1
                    else:
                        searches[record["search_id"]] = _captured(record)
    for event in events:
        held = searches.get(event["search_id"])
        if held is None or event.get("event", "click") != "click":
            continue
        held.clicked.update(i for i, (index, doc) in enumerate(held.keys)
                            if doc == event["doc_id"] and event.get("index") in (None, index))
    return list(searches.values()), skipped


def _captured(record: dict[str, Any]) -> CapturedSearch:
    window = record["window"]
    return CapturedSearch(
        search_id=record["search_id"], index=record.get("index"), query=record["query"],
        keys=[(hit.get("index"), hit["id"]) for hit in window],
        cluster_scores=[hit.get("cluster_score") for hit in window],
        served=list(record["served"]), status=record.get("status", ""), documents=record.get("documents"),
    )


def candidate_settings(config: Config, index: str | None, variant: str | None) -> RerankSettings:
    """The settings the candidate gives a search of `index`: defaults, its first index rule, then `variant`."""
    names = index.split(",") if index else []
    rule = config.rule_for(names[0]) if len(names) == 1 else None
    settings = rule.apply_to(config.defaults) if rule else config.defaults
    return config.variants[variant].apply_to(settings) if variant else settings


async def fetch_texts(http: aiohttp.ClientSession, upstream: str, search: CapturedSearch,
                      settings: RerankSettings) -> list[str]:
    fields = settings.text.source_fields()
    docs = [{"_index": index, "_id": doc, "_source": fields if fields is not None else True}
            for index, doc in search.keys]
    async with http.post(f"{upstream}/_mget", json={"docs": docs}) as reply:
        body = await reply.read()
        if reply.status != 200:
            raise ReplayError(f"_mget from {upstream} answered {reply.status}: {body[:300]!r}")
    found = orjson.loads(body)["docs"]
    return [build_document_text(doc.get("_source") if doc.get("found") else None, settings.text) for doc in found]


async def replay_one(engine: ScoringEngine, config: Config, search: CapturedSearch, texts: Sequence[str],
                     variant: str | None) -> Replayed:
    settings = candidate_settings(config, search.index, variant)
    started = time.perf_counter()
    try:
        scores = await engine.score(config.model_name(settings), search.query, texts, settings.timeout_ms / 1000)
        status = "reranked" if all(s is not None for s in scores) else "partial"
    except Exception:  # as the proxy does: the candidate's trouble is its cluster order
        scores, status = [None] * len(texts), "fallback"
    took_ms = (time.perf_counter() - started) * 1000
    order = [hit.position for hit in rank(search.cluster_scores, scores, settings.fusion)]
    return Replayed(search, order, status, took_ms, agreement(search.served, order))


def predicted_preference(replayed: Sequence[Replayed]) -> ExperimentTally:
    """Served (a) against candidate (b), credited by the captured clicks on a team-draft page of the two."""
    tally = ExperimentTally()
    for result in replayed:
        search = result.search
        if not search.clicked:
            continue
        page = team_draft(search.served, result.order, seed=search_seed(search.search_id)).page(0, PAGE)
        tally = tally.add(page.outcome(search.clicked))
    return tally


def judged_quality(replayed: Sequence[Replayed], qrels_path: Path, queries_path: Path) -> dict[str, dict[str, float]]:
    qrels = read_qrels(qrels_path)
    by_text = {text: qid for qid, text in read_queries(queries_path).items() if qid in qrels}
    runs: dict[str, dict[str, dict[str, float]]] = {"served": {}, "candidate": {}}
    for result in replayed:  # the first captured search of each judged query
        qid = by_text.get(result.search.query)
        if qid is None or qid in runs["served"]:
            continue
        for name, order in (("served", result.search.served), ("candidate", result.order)):
            runs[name][qid] = {result.search.keys[p][1]: float(len(order) - r) for r, p in enumerate(order)}
    qids = list(runs["served"])
    if not qids:
        return {}
    return {name: {**score_run(qrels, run, qids)[0], "queries": float(len(qids))} for name, run in runs.items()}


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


@dataclass
class Report:
    replayed: list[Replayed]
    skipped: dict[str, int]
    preference: dict[str, Any]
    quality: dict[str, dict[str, float]]

    def summary(self) -> dict[str, Any]:
        took = [r.took_ms for r in self.replayed]
        statuses = [r.status for r in self.replayed]
        return {
            "searches": len(self.replayed), "skipped": self.skipped,
            "statuses": {s: statuses.count(s) for s in ("reranked", "partial", "fallback")},
            "fallback_rate": statuses.count("fallback") / len(statuses) if statuses else 0.0,
            "latency_ms": {f"p{q}": round(percentile(took, q / 100), 2) for q in (50, 95, 99)},
            "agreement": {key: round(statistics.fmean(getattr(r.agreement, key) for r in self.replayed), 4)
                          for key in ("overlap_at_10", "kendall_tau", "rbo")} if self.replayed else {},
            "preference": self.preference,
            "quality": self.quality,
        }

    def as_json(self) -> dict[str, Any]:
        per_search = [{"search_id": r.search.search_id, "index": r.search.index, "query": r.search.query,
                       "served_status": r.search.status, "status": r.status, "took_ms": round(r.took_ms, 2),
                       "clicked": sorted(r.search.clicked), **asdict(r.agreement)} for r in self.replayed]
        return {"summary": self.summary(), "searches": per_search}

    def table(self, changed: int = 5) -> str:
        s = self.summary()
        rows = [("searches replayed", f"{s['searches']:,}"),
                ("left out", ", ".join(f"{k}: {v}" for k, v in s["skipped"].items()) or "none"),
                ("candidate reranked / partial / fallback", " / ".join(str(v) for v in s["statuses"].values())),
                ("candidate latency p50 / p95 / p99", " / ".join(f"{v:,.1f} ms" for v in s["latency_ms"].values()))]
        rows += [(f"mean {key} vs served", f"{value:.4f}") for key, value in s["agreement"].items()]
        p = self.preference
        rows += [("clicked searches", f"{p['clicked_searches']:,}"),
                 ("predicted wins served / candidate / ties", f"{p['wins_a']} / {p['wins_b']} / {p['ties']}"),
                 ("sign test p", f"{p['p_value']:.3g}")]
        for name, measures in self.quality.items():
            rows.append((f"{name} NDCG@10 / MRR@10 ({int(measures['queries'])} judged)",
                         f"{measures['ndcg@10']:.4f} / {measures['mrr@10']:.4f}"))
        lines = ["| replay | |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows)]
        moved = sorted(self.replayed, key=lambda r: r.agreement.rbo)[:changed]
        if moved:
            lines += ["", "| most changed search | overlap@10 | tau | RBO |", "|---|---:|---:|---:|"]
            lines += [f"| {r.search.query[:60]} | {r.agreement.overlap_at_10:.2f} | {r.agreement.kendall_tau:.3f} | "
                      f"{r.agreement.rbo:.3f} |" for r in moved]
        return "\n".join(lines)


def plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key in zip(axes, ("overlap_at_10", "kendall_tau", "rbo")):
        values = sorted(getattr(r.agreement, key) for r in report.replayed)
        ax.plot(range(len(values)), values, color="tab:blue")
        ax.set_title(f"{key} (mean {statistics.fmean(values) if values else 0:.3f})")
        ax.set_xlabel("captured searches, sorted")
        ax.set_ylim(-1.05 if key == "kendall_tau" else -0.05, 1.05)
    fig.suptitle("candidate vs served, per search")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def replay(args: argparse.Namespace) -> Report:
    config = load_config(args.config)
    if args.variant and args.variant not in config.variants:
        raise ReplayError(f"--variant: {args.variant} is not a variant of {args.config}")
    searches, skipped = read_capture(args.capture)
    if args.max_searches is not None:
        searches = searches[: args.max_searches]
    upstream = (args.upstream or config.upstreams[0]).rstrip("/")
    engine = ScoringEngine(config.models)
    await engine.start()
    limit = asyncio.Semaphore(args.concurrency)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
            async def one(search: CapturedSearch) -> Replayed:
                async with limit:
                    settings = candidate_settings(config, search.index, args.variant)
                    texts = search.documents if search.documents is not None and not args.fetch else (
                        await fetch_texts(http, upstream, search, settings))
                    return await replay_one(engine, config, search, texts, args.variant)

            replayed = list(await asyncio.gather(*(one(s) for s in searches)))
    finally:
        await engine.close()
    preference = asdict(summarize(predicted_preference(replayed)))
    quality = judged_quality(replayed, args.qrels, args.queries) if args.qrels else {}
    return Report(replayed, skipped, preference, quality)


def run_replay(args: argparse.Namespace) -> int:
    if bool(args.qrels) != bool(args.queries):
        print("rerank-proxy replay: --qrels and --queries go together", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(replay(args))
    except (ReplayError, OSError) as err:
        print(f"rerank-proxy replay: {err}", file=sys.stderr)
        return 1
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.as_json(), indent=2) + "\n", encoding="utf-8")
    if args.plot:
        plot(report, args.plot)
    return 0
