"""The reference side of `benchmarks/scorer.py` for mxbai-v2: mixedbread's own `mxbai-rerank` library.

The library needs transformers < 5, so this runs in its own venv (scorer.py creates one on demand) as a child
process, and must not import anything from the project that needs the project's transformers:

    REFERENCE_PYTHON -m benchmarks.reference_scorer JOB.json

JOB.json: {"model": folder, "max_length": int, "batch_size": int, "threads": int, "dtype": "float32"}.

Protocol, one JSON object per line: after loading it writes {"ready": true, ...} with versions and the loaded
weights' fingerprint; then for every {"query": str, "docs": [str, ...]} read on stdin it answers
{"seconds": float, "scores": [float, ...]}, timed here so the pipe is not counted. The parent alternates these calls
with its own, so both sides see the same machine load. EOF ends the process.
"""
from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from rerank_proxy_tools.qwen import loaded_weights_sha256  # torch only: safe under transformers 4

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def score_query(ranker: Any, query: str, docs: list[str], batch_size: int) -> list[float]:
    """The library's public reranking call, scores back in input order."""
    results = ranker.rank(query, docs, top_k=len(docs), sort=False, batch_size=batch_size)
    return [r.score for r in sorted(results, key=lambda r: r.index)]


def reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    torch.set_num_threads(job["threads"])
    from mxbai_rerank import MxbaiRerankV2

    start = time.perf_counter()
    ranker = MxbaiRerankV2(
        job["model"], device="cpu", torch_dtype=DTYPES[job["dtype"]], max_length=job["max_length"],
        disable_transformers_warnings=True,
    )
    load_s = time.perf_counter() - start
    versions = {pkg: version(pkg) for pkg in ("mxbai-rerank", "transformers", "torch")}
    reply({"ready": True, "load_seconds": load_s, "versions": versions,
           "weights_sha256": loaded_weights_sha256(ranker.model), "threads": torch.get_num_threads()})
    for line in sys.stdin:
        request = json.loads(line)
        start = time.perf_counter()
        scores = score_query(ranker, request["query"], request["docs"], job["batch_size"])
        reply({"seconds": time.perf_counter() - start, "scores": scores})


if __name__ == "__main__":
    main()
