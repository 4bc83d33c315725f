"""How `compile: true` compiles: each transformer block (what the product does) against the whole model, and eager.

    .venv/bin/python -m benchmarks.compile_modes                        # MiniLM bi- and cross-encoder, ~4 minutes
    .venv/bin/python -m benchmarks.compile_modes --models base-v2       # mxbai base-v2 shape, ~8 minutes on 2 cores

Three copies of one model in one process: eager; the whole model through torch.compile (dynamic shapes), as the
product compiled before; and the product's `compile: true` (`rerank.loading.compile_blocks`: every block of the
layer stack compiled in place, one traced graph reused by all). Each compiled copy is timed from cold through the
product's warm-up (a batch of one, then of two); then `--rounds` calls of one search (`--docs` documents), the
arms alternating with the order reversed every round, so the machine's drift hits all alike. Prints a table:
compile seconds, median seconds per call, speed-up over eager and the largest score difference from eager.

The first arm to compile a block class pays for it: torch caches graphs by code, so models sharing a block class
(the two MiniLMs) are compiled in separate processes here.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # cold compiles: no kernels from earlier runs

import torch

from rerank.loading import compile_blocks
from rerank.registry import load_scorer
from rerank.spec import BiEncoderSpec, CrossEncoderSpec, ModelSpec, MxbaiV2Spec

REPO = Path(__file__).resolve().parents[1]

QUERY = "vitamin c deficiency and scurvy in sailors"
MODELS = ("minilm", "minilm-ce", "base-v2")


def documents(count: int) -> list[str]:
    sentence = "Scurvy results from a prolonged lack of ascorbic acid in the diet. "
    return [sentence * (1 + i % 4) + f"Document {i}." for i in range(count)]


def spec_for(model: str, workdir: Path) -> ModelSpec:
    if model == "minilm":
        from rerank_proxy_tools.models import MINILM_SOURCE

        return BiEncoderSpec(source=MINILM_SOURCE, cache_entries=0)
    if model == "minilm-ce":
        from rerank_proxy_tools.models import make_minilm_cross_encoder

        return CrossEncoderSpec(source=str(make_minilm_cross_encoder(workdir / model)))
    from benchmarks.gpu_bench import SHAPES, write_random_qwen2

    write_random_qwen2(workdir / model, SHAPES["base-v2"], torch.float32, torch.device("cpu"))
    return MxbaiV2Spec(source=str(workdir / model), max_length=128)


def race(model: str, docs: list[str], rounds: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        spec = spec_for(model, Path(tmp))
        eager = load_scorer(model, spec)
        # The product's way first: whatever the second compile reuses from the first favours the whole model.
        blocks = load_scorer(model, spec)  # loaded uncompiled, then compiled as `compile: true` does it
        start = time.perf_counter()
        blocks._uncompile = compile_blocks(blocks.module)
        blocks.warm_up()
        blocks_s = time.perf_counter() - start
        whole = load_scorer(model, spec)
        start = time.perf_counter()
        whole.forward = torch.compile(whole.module, dynamic=True)
        whole.score_pairs(["warm up"], ["warm up"])  # the product's warm-up: a batch of one, then of two
        whole.score_pairs(["warm up"] * 2, ["a first document", "a second document, a little longer"])
        whole_s = time.perf_counter() - start
    arms = {"eager": eager, "whole model": whole, "blocks (product)": blocks}
    reference = eager.score(QUERY, docs)
    diffs = {name: max(abs(a - b) for a, b in zip(arm.score(QUERY, docs), reference)) for name, arm in arms.items()}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(rounds):
        for name in list(arms) if r % 2 == 0 else list(arms)[::-1]:
            start = time.perf_counter()
            arms[name].score(QUERY, docs)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    compiled = {"eager": "-", "whole model": f"{whole_s:.0f}", "blocks (product)": f"{blocks_s:.0f}"}
    return "\n".join(f"| {model} | {name} | {compiled[name]} | {median[name]:.3f} | "
                     f"{median['eager'] / median[name]:.2f}x | {diffs[name]:.1e} |" for name in arms)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,minilm-ce", help=f"comma list of {', '.join(MODELS)} "
                        "(default %(default)s)")
    parser.add_argument("--docs", type=int, help="documents per call (default 25; 2 for base-v2)")
    parser.add_argument("--rounds", type=int, help="timed calls per arm (default 10; 3 for base-v2)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process races one model
    args = parser.parse_args(argv)
    if args.one:
        big = args.one == "base-v2"
        print(race(args.one, documents(args.docs or (2 if big else 25)), args.rounds or (3 if big else 10)))
        return
    rows = []
    for model in args.models.split(","):
        if model not in MODELS:
            raise SystemExit(f"unknown model {model!r} (known: {', '.join(MODELS)})")
        print(f"{model}: racing eager, whole-model and per-block compile", file=sys.stderr, flush=True)
        extra = [flag for flag, value in (("--docs", args.docs), ("--rounds", args.rounds)) if value]
        child = [sys.executable, "-m", "benchmarks.compile_modes", "--one", model]
        for flag in extra:
            child += [flag, str(getattr(args, flag[2:]))]
        done = subprocess.run(child, check=True, capture_output=True, text=True, cwd=REPO)
        rows.append(done.stdout.strip())
    print(f"\nCPU, {torch.get_num_threads()} threads, float32; compile s = from cold through the warm-up\n")
    print("| model | compiled | compile s | s per call (median) | vs eager | max abs diff vs eager |")
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
