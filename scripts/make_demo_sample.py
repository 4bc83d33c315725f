"""Builds rerank_proxy_tools/demo_data/scifact-sample.json.gz from ../shared/data/scifact (run once; the output is
committed): `python -m scripts.make_demo_sample [SCIFACT_FOLDER]` from the repository root.

The sample keeps every document judged for the test queries plus a seeded random draw of the rest, so the demo's
NDCG is computed on real judgments over a corpus big enough for BM25 to make mistakes.
"""
import gzip
import json
import random
import sys
from pathlib import Path

src = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/scifact")
out = Path(__file__).resolve().parents[1] / "rerank_proxy_tools" / "demo_data" / "scifact-sample.json.gz"
corpus = [json.loads(line) for line in (src / "corpus.jsonl").open()]
queries = {q["_id"]: q["text"] for q in map(json.loads, (src / "queries.jsonl").open())}
qrels: dict[str, dict[str, int]] = {}
for line in list((src / "qrels" / "test.tsv").open())[1:]:
    qid, did, score = line.rstrip("\n").split("\t")
    qrels.setdefault(qid, {})[did] = int(score)
judged = {d for rel in qrels.values() for d in rel}
rest = [d for d in corpus if d["_id"] not in judged]
random.Random(0).shuffle(rest)
docs = [d for d in corpus if d["_id"] in judged] + rest[:1700]
sample = {"corpus": docs, "queries": {q: queries[q] for q in qrels}, "qrels": qrels}
out.write_bytes(gzip.compress(json.dumps(sample, ensure_ascii=False).encode(), mtime=0))
print(f"{out}: {len(docs)} docs, {len(qrels)} queries, {out.stat().st_size} bytes")
