"""The quality sweep: `rerank-proxy eval` on every collection in ../shared/data, on Elasticsearch and OpenSearch,
with every fusion mode, checked against the offline reference; writes benchmarks/quality.md.

    python -m benchmarks.quality                       # starts both clusters itself (integ-test-zips)
    python -m benchmarks.quality --es http://127.0.0.1:9200 --os http://127.0.0.1:9300 --sets medline,scifact

Each (cluster, collection) is one `rerank-proxy eval` run (window 100, the shipped CPU default MiniLM + linear
fusion as `reranked`, `replace` and `rrf` as variants; see quality/fusion.yaml) that keeps its index, then
`offline_reference.py` on the same index with the same model outside the proxy, then the index is deleted. Results
accumulate in quality/results-{es,os}.json, so an interrupted sweep resumes where it stopped (--force redoes a run).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

DATA = ROOT.parent / "shared" / "data"
RESULTS = HERE / "quality" / "results-{flavor}.json"  # one file per cluster: the two sweeps can run side by side
REPORT = HERE / "quality.md"
FUSION_CONFIG = HERE / "quality" / "fusion.yaml"
PARITY_TOLERANCE = 0.002
ENGLISH = ("scifact", "cranfield", "cisi", "medline", "vaswani", "cosqa", "metatool", "gorilla-hf", "xquad-r/en")
# OpenSearch's analysis-common analyzers per XQuAD-R language (Elasticsearch's integ-test-zip has none).
XQUAD_ANALYZERS = {"en": "english", "es": "spanish", "el": "greek", "tr": "turkish", "ar": "arabic", "hi": "hindi",
                   "th": "thai", "zh": "cjk"}
FLAVORS = {"es": "elasticsearch", "os": "opensearch"}


@dataclass(frozen=True)
class Run:
    """One row of the sweep: a collection, indexed and reranked one way."""

    name: str  # results key, e.g. "scifact", "gorilla-hf/structured", "xquad-r/ar"
    folder: str  # under DATA
    qrels: str | None = None
    structured: bool = False
    config: str = "fusion.yaml"
    variants: tuple[str, ...] = ("replace", "rrf")
    analyzer: dict[str, str] = field(default_factory=dict)  # flavor key -> analyzer
    reference_fields: str = "title,text"
    reference_run: str = "reranked"  # the proxy run the offline reference's `linear` must equal

    def eval_args(self, flavor: str) -> list[str]:
        args = ["--data", str(DATA / self.folder), "--config", str(HERE / "quality" / self.config),
                "--index", self.index]
        for variant in self.variants:
            args += ["--variant", variant]
        if self.qrels:
            args += ["--qrels", str(DATA / self.folder / self.qrels)]
        if self.structured:
            args.append("--structured")
        if flavor in self.analyzer:
            args += ["--analyzer", self.analyzer[flavor]]
        return args

    @property
    def index(self) -> str:
        return "quality-" + self.name.replace("/", "-")


RUNS = [
    *(Run(name, name) for name in ("scifact", "cranfield", "cisi", "medline", "vaswani", "cosqa")),
    Run("metatool", "metatool", qrels="qrels/test_sample.tsv"),
    Run("gorilla-hf", "gorilla-hf"),  # the record as one JSON string in `text`
    Run("gorilla-hf/structured", "gorilla-hf", structured=True, config="gorilla-hf.yaml", variants=("fields", "template"),
        reference_fields="title,domain,functionality,description", reference_run="fields"),
    *(Run(f"xquad-r/{lang}", f"xquad-r/{lang}", analyzer={"os": analyzer})
      for lang, analyzer in XQUAD_ANALYZERS.items()),
]


def load_results() -> dict:
    paths = {key: Path(str(RESULTS).format(flavor=key)) for key in FLAVORS}
    return {key: json.loads(path.read_text()) for key, path in paths.items() if path.is_file()}


def save_results(results: dict, key: str) -> None:
    Path(str(RESULTS).format(flavor=key)).write_text(json.dumps(results[key], indent=1, sort_keys=True) + "\n")


def one_json(path: Path) -> dict:
    (only,) = json.loads(path.read_text()).values()
    return only


def sweep_one(run: Run, flavor: str, url: str, work: Path, reference: bool) -> dict:
    bin_dir = Path(sys.executable).parent
    started = time.monotonic()
    proxy_json, ref_json = work / "proxy.json", work / "reference.json"
    for path in (proxy_json, ref_json):
        path.unlink(missing_ok=True)
    try:
        subprocess.run([str(bin_dir / "rerank-proxy"), "eval", "--upstream", url, *run.eval_args(flavor), "--keep",
                        "--json", str(proxy_json)], check=True)
        if reference:
            subprocess.run([sys.executable, "-m", "benchmarks.offline_reference", "--data", str(DATA / run.folder),
                            "--upstream", url, "--index", run.index, "--fields", run.reference_fields,
                            *(["--qrels", str(DATA / run.folder / run.qrels)] if run.qrels else []),
                            "--json", str(ref_json)], check=True, cwd=ROOT)
    finally:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(urllib.request.Request(f"{url}/{run.index}", method="DELETE"), timeout=60)
    return {"proxy": one_json(proxy_json), "reference": one_json(ref_json) if reference else None,
            "analyzer": run.analyzer.get(flavor, "standard"), "seconds": round(time.monotonic() - started)}


@contextlib.contextmanager
def clusters(urls: dict[str, str | None], wanted: list[str]) -> Iterator[dict[str, str]]:
    from rerank_proxy_tools.localcluster import LocalCluster

    started: list[LocalCluster] = []
    try:
        found = {}
        for key in wanted:
            if urls.get(key):
                found[key] = urls[key].rstrip("/")
            else:
                cluster = LocalCluster(FLAVORS[key])  # type: ignore[arg-type]
                started.append(cluster)
                found[key] = cluster.start()
        yield found
    finally:
        for cluster in started:
            cluster.stop()


# ---- the report -------------------------------------------------------------------------------------------------


def _ndcg(entry: dict, run: str) -> float | None:
    return entry["proxy"].get(run, {}).get("ndcg@10")


def render(results: dict) -> str:
    out = [
        "# Search quality through the proxy",
        "",
        "Written by `python -m benchmarks.quality` (the commands are at the end). Every number is NDCG@10 over the",
        "judged queries, BM25 top 100 from the cluster (standard analyzer unless noted, no stemming), window 100,",
        "the shipped CPU model (all-MiniLM-L6-v2 cosine). `reranked` is the shipped default: linear fusion, 0.5 each",
        "after min-max normalisation over the window; `replace` ranks by the model alone; `rrf` is reciprocal rank",
        "fusion (k=60). MetaTool uses `qrels/test_sample.tsv` (1,497 queries); XQuAD-R all 1,190 questions of",
        "each language. BM25 here is the cluster's own (`multi_match` over the mapped text fields), so it differs",
        "from the bm25s sanity numbers in ../shared/data/SOURCES.md.",
        "",
    ]
    for key, flavor in FLAVORS.items():
        rows = results.get(key, {})
        if not rows:
            continue
        out += [f"## {flavor}", "", "| set | BM25 | reranked | Δ | replace | rrf | MRR@10 bm25 → reranked | R@100 |",
                "|---|---:|---:|---:|---:|---:|---|---:|"]
        for run in RUNS:
            entry = rows.get(run.name)
            if entry is None or run.structured:
                continue
            p = entry["proxy"]
            bm25, reranked = p["bm25"], p["reranked"]
            note = f" ({entry['analyzer']})" if entry["analyzer"] != "standard" else ""
            out.append(
                f"| {run.name}{note} | {bm25['ndcg@10']:.3f} | **{reranked['ndcg@10']:.3f}** | "
                f"{reranked['ndcg@10'] - bm25['ndcg@10']:+.3f} | {_cell(p, 'replace')} | {_cell(p, 'rrf')} | "
                f"{bm25['mrr@10']:.3f} → {reranked['mrr@10']:.3f} | {reranked['recall@100']:.3f} |"
            )
        out.append("")
    out += _structured_section(results) + _parity_section(results) + _commands()
    return "\n".join(out) + "\n"


def summary_table(results: dict) -> str:
    """BM25 vs reranked (the shipped default) per set and cluster: the README's table."""
    lines = ["| set | Elasticsearch BM25 → reranked | OpenSearch BM25 → reranked |", "|---|---|---|"]
    for run in RUNS:
        cells = []
        for key in FLAVORS:
            entry = results.get(key, {}).get(run.name)
            if entry is None:
                cells.append("–")
                continue
            bm25, reranked = _ndcg(entry, "bm25"), _ndcg(entry, "reranked")
            analyzer = f" ({entry['analyzer']})" if entry["analyzer"] != "standard" else ""
            cells.append(f"{bm25:.3f} → **{reranked:.3f}** ({reranked - bm25:+.3f}){analyzer}")
        if any(cell != "–" for cell in cells):
            name = f"{run.name} (flattened record)" if run.structured else run.name
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(proxy: dict, run: str) -> str:
    return f"{proxy[run]['ndcg@10']:.3f}" if run in proxy else "–"


def _structured_section(results: dict) -> list[str]:
    out = ["## Structured records: Gorilla (HuggingFace APIs)", "",
           "The same 936 API records indexed two ways. *One string*: the record's JSON in one `text` field, and the",
           "model reads `title` + that JSON string. *Structured* (`eval --structured`): the record's fields are",
           "real `_source` fields; those that hold text in every record (title, domain, framework, functionality,",
           "api_name, api_call, description) are mapped and searched by BM25, the others (arguments, example code,",
           "performance: objects in some records, strings in others) stay in `_source` unindexed; the model reads",
           "the text the proxy builds from `_source` (config `quality/gorilla-hf.yaml`): *flattened* is the default",
           "JSON-aware `key: value` flattening of the whole record, *fields* lists title, domain, functionality and",
           "description, *template* renders "
           "`{api_name}: {description} / Task: {functionality} ({domain}, {framework})`.", "",
           "| cluster | index | BM25 | one string | flattened | fields | template |", "|---|---|---:|---:|---:|---:|---:|"]
    for key, flavor in FLAVORS.items():
        plain = results.get(key, {}).get("gorilla-hf")
        structured = results.get(key, {}).get("gorilla-hf/structured")
        if plain:
            out.append(f"| {flavor} | one string | {_ndcg(plain, 'bm25'):.3f} | {_ndcg(plain, 'reranked'):.3f} "
                       "| | | |")
        if structured:
            s = structured["proxy"]
            out.append(f"| {flavor} | structured | {s['bm25']['ndcg@10']:.3f} | | {s['reranked']['ndcg@10']:.3f} | "
                       f"{s['fields']['ndcg@10']:.3f} | {s['template']['ndcg@10']:.3f} |")
    return out + [""]


def _parity_section(results: dict) -> list[str]:
    out = ["## No loss through the proxy", "",
           "`benchmarks/offline_reference.py` reranks the same BM25 candidates outside the proxy (straight from the",
           "cluster, sentence-transformers' own `SentenceTransformer` on the same weights, its own fusion code, nothing",
           f"imported from the project). Tolerance: |Δ| ≤ {PARITY_TOLERANCE} NDCG@10 per set and fusion mode.", "",
           "| cluster | set | linear proxy / offline | replace proxy / offline | rrf proxy / offline | max abs Δ |",
           "|---|---|---|---|---|---:|"]
    worst = 0.0
    for key, flavor in FLAVORS.items():
        for run in RUNS:
            entry = results.get(key, {}).get(run.name)
            if entry is None or entry["reference"] is None:
                continue
            pairs = [(run.reference_run, "linear")] + ([("replace", "replace"), ("rrf", "rrf")]
                                                       if not run.structured else [])
            cells, gaps = [], []
            for proxy_run, ref_run in pairs:
                ours, ref = _ndcg(entry, proxy_run), entry["reference"][ref_run]["ndcg@10"]
                cells.append(f"{ours:.4f} / {ref:.4f}")
                gaps.append(abs(ours - ref))
            cells += ["–"] * (3 - len(cells))
            worst = max(worst, *gaps)
            out.append(f"| {flavor} | {run.name} | " + " | ".join(cells) + f" | {max(gaps):.4f} |")
    verdict = "holds" if worst <= PARITY_TOLERANCE else "DOES NOT hold"
    return out + ["", f"Largest gap: {worst:.4f}; the {PARITY_TOLERANCE} tolerance {verdict}.", ""]


def _commands() -> list[str]:
    return ["## Reproduce", "", "```",
            "make venv",
            ".venv/bin/python -m benchmarks.quality            # both clusters, every set (a few hours on 2 cores)",
            ".venv/bin/python -m benchmarks.quality --report   # rewrite this file from quality/results-*.json",
            "# one set by hand, against a running cluster:",
            ".venv/bin/rerank-proxy eval --data ../shared/data/scifact --upstream http://127.0.0.1:9200 \\",
            "    --config benchmarks/quality/fusion.yaml --variant replace --variant rrf --keep",
            ".venv/bin/python -m benchmarks.offline_reference --data ../shared/data/scifact \\",
            "    --upstream http://127.0.0.1:9200 --index eval-scifact",
            "```", ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--es", help="a running Elasticsearch (default: start one)")
    parser.add_argument("--os", help="a running OpenSearch (default: start one)")
    parser.add_argument("--flavors", default="es,os")
    parser.add_argument("--sets", help="comma list of run names (default: all)")
    parser.add_argument("--reference", default="es,os", help="clusters whose runs the offline reference checks")
    parser.add_argument("--force", action="store_true", help="redo runs already recorded")
    parser.add_argument("--report", action="store_true", help="only rewrite quality.md from the recorded results")
    parser.add_argument("--summary", action="store_true", help="only print the README's summary table")
    args = parser.parse_args(argv)

    results = load_results()
    if args.summary:
        print(summary_table(results))
        return 0
    if not args.report:
        wanted = [k for k in args.flavors.split(",") if k]
        names = set(args.sets.split(",")) if args.sets else {r.name for r in RUNS}
        work = HERE / "quality" / ".work"
        with clusters({"es": args.es, "os": args.os}, wanted) as urls:
            for key in wanted:
                for run in RUNS:
                    if run.name not in names or (run.name in results.get(key, {}) and not args.force):
                        continue
                    print(f"== {FLAVORS[key]}: {run.name}", file=sys.stderr, flush=True)
                    (work / key).mkdir(parents=True, exist_ok=True)  # sweeps of both clusters may run at once
                    results.setdefault(key, {})[run.name] = sweep_one(run, key, urls[key], work / key,
                                                                      key in args.reference.split(","))
                    save_results(results, key)
                    REPORT.write_text(render(results))
    REPORT.write_text(render(results))
    print(REPORT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
