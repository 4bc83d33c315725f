"""Reference scores from mixedbread's own `mxbai-rerank` library, for the mxbai-v2 parity tests.

The library needs transformers < 5 and the project runs transformers 5, so this runs in its own venv:

    python3 -m venv /tmp/mxbai-ref
    /tmp/mxbai-ref/bin/pip install mxbai-rerank 'transformers<5' torch
    /tmp/mxbai-ref/bin/python -m scripts.mxbai_reference            # every model below
    /tmp/mxbai-ref/bin/python -m scripts.mxbai_reference tiny       # just one of them

From the repository root, which `-m` puts on the path. It builds the same seeded random Qwen2 folders the tests
build (`rerank_proxy_tools/qwen.py`, which is independent of the transformers version): tiny with the tests' small
BPE, tiny with Qwen's own tokenizer (its vocabulary fetched once from PyPI), and base-v2's shapes. It scores fixed
cases with `MxbaiRerankV2` in float32 on CPU, and writes
`tests/fixtures/mxbai_reference_<model>.json`: per case the inputs, the reference's token ids per pair (padding
stripped) and its scores, plus fingerprints of the weights and tokenizer so a test can tell "our scores differ"
from "we scored a different model".
"""
from __future__ import annotations

import argparse
import json
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from rerank_proxy_tools.qwen import (
    BASE_V2_CONFIG,
    TINY_CONFIG,
    TINY_QWEN_VOCAB_CONFIG,
    loaded_weights_sha256,
    make_base_v2_qwen2,
    make_tiny_qwen2,
    make_tiny_qwen2_qwen_vocab,
    tokenizer_sha256,
)

ROOT = Path(__file__).resolve().parents[1]

FIXTURES = ROOT / "tests" / "fixtures"
QUERY = "How does a lack of vitamin C affect sailors on long voyages?"
DOCS = [
    "Scurvy is caused by a lack of vitamin C; sailors avoided it by eating citrus fruit.",
    "The capital of France is Paris.",
    "Smoking damages the lungs and raises the risk of cancer and heart disease.",
    "Long sea voyages in the 18th century often ended with bleeding gums, loose teeth and exhaustion among the crew, "
    "until lemons and limes were added to the rations.",
    "Vitamin C",
    "Photosynthesis converts light, water and carbon dioxide into sugar and oxygen.",
    "La carence en vitamine C provoque le scorbut chez les marins. Ünïcödé: 壊血病, цинга.",
    "",
]
LONG_DOC = " ".join(DOCS[:4] * 6)
LONG_QUERY = " ".join([QUERY] * 8)
INSTRUCTION = "Prefer documents that explain the cause."

# One reference instance per (max_length): it is a constructor argument there. `batch_size=None` = one `predict`
# call over all pairs (a single left-padded batch); a number = `rank` with the library's length-bucketed batches.
TINY_CASES: list[dict[str, Any]] = [
    {"name": "plain", "query": QUERY, "docs": DOCS, "instruction": None, "max_length": 8192, "batch_size": None},
    {"name": "instruction", "query": QUERY, "docs": DOCS, "instruction": INSTRUCTION, "max_length": 8192,
     "batch_size": None},
    {"name": "bucketed", "query": QUERY, "docs": DOCS, "instruction": None, "max_length": 8192, "batch_size": 3},
    {"name": "truncated-document", "query": QUERY, "docs": [LONG_DOC, " ".join(DOCS[2:4] * 5), LONG_DOC[::-1]],
     "instruction": INSTRUCTION, "max_length": 64, "batch_size": None},
    {"name": "truncated-query", "query": LONG_QUERY, "docs": [LONG_DOC, DOCS[2], DOCS[5]], "instruction": None,
     "max_length": 64, "batch_size": None},
]
BASE_CASES: list[dict[str, Any]] = [
    {"name": "plain", "query": QUERY, "docs": DOCS[:5], "instruction": None, "max_length": 8192, "batch_size": None},
]
MODELS = {
    "tiny": (make_tiny_qwen2, TINY_CONFIG, TINY_CASES),
    # Qwen's own tokenizer merges across far more boundaries than the small BPE: the piecewise prompt must still
    # give the library's ids.
    "tiny-qwen-vocab": (make_tiny_qwen2_qwen_vocab, TINY_QWEN_VOCAB_CONFIG, TINY_CASES),
    "base-v2": (make_base_v2_qwen2, BASE_V2_CONFIG, BASE_CASES),
}


def reference_case(folder: Path, case: dict[str, Any]) -> dict[str, Any]:
    from mxbai_rerank import MxbaiRerankV2

    ranker = MxbaiRerankV2(str(folder), device="cpu", torch_dtype=torch.float32, max_length=case["max_length"])
    queries = [case["query"]] * len(case["docs"])
    encoded = ranker.prepare_inputs(queries, case["docs"], instruction=case["instruction"])
    input_ids = [ids[mask.bool()].tolist() for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
    if case["batch_size"] is None:
        scores = ranker.predict(queries, case["docs"], instruction=case["instruction"]).tolist()
    else:
        results = ranker.rank(
            case["query"], case["docs"], top_k=len(case["docs"]), sort=False, batch_size=case["batch_size"],
            instruction=case["instruction"],
        )
        scores = [r.score for r in sorted(results, key=lambda r: r.index)]
    loaded = loaded_weights_sha256(ranker.model)
    return {**case, "input_ids": input_ids, "scores": scores, "weights_sha256_loaded": loaded}


def build_fixture(name: str) -> dict[str, Any]:
    make, shape, cases = MODELS[name]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights = make(folder, seed=0)
        results = [reference_case(folder, case) for case in cases]
        tokenizer = tokenizer_sha256(folder)
    for result in results:
        if result.pop("weights_sha256_loaded") != weights:
            raise SystemExit(f"{name}/{result['name']}: the reference did not load the generated weights unchanged")
    return {
        "model": name,
        "shape": shape,
        "seed": 0,
        "dtype": "float32",
        "weights_sha256": weights,
        "tokenizer_sha256": tokenizer,
        "versions": {pkg: version(pkg) for pkg in ("mxbai-rerank", "transformers", "torch", "tokenizers")},
        "cases": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"any of {', '.join(MODELS)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown model(s) {', '.join(sorted(unknown))}; known: {', '.join(MODELS)}")
    torch.manual_seed(0)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name in args.models or MODELS:
        fixture = build_fixture(name)
        path = FIXTURES / f"mxbai_reference_{name}.json"
        path.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        for case in fixture["cases"]:
            spread = max(case["scores"]) - min(case["scores"])
            print(f"{name}/{case['name']}: {len(case['scores'])} scores, spread {spread:.3f}: "
                  + " ".join(f"{s:.4f}" for s in case["scores"]))
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
