"""Where one mxbai-v2 model call spends its time: the product's call against variants of it, and kernels by kind.

    bash benchmarks/gpu.sh --profile                       # on a GPU machine (base-v2 and large-v2 shapes)
    python -m benchmarks.gpu_profile --tiny                 # anywhere: a tiny Qwen2 on CPU, proves it works
    bash benchmarks/gpu.sh --profile --compile              # also torch.compile on the call's fixed shape (slow)

One call = as many (query, document) pairs of about `--doc-tokens` tokens as fit `--call-tokens` padded tokens (the
product's GPU budget by default), built and loaded as benchmarks/gpu_bench.py builds them. Rows, each the median of
`--repeats` timed runs after warm-ups, synchronised on the device:

- `score_encoded`: the product's path for encoded pairs, uncompiled (host tensors, right padding, the decoder, the
  LM head on each pair's last token, scores to the host), sharing the pairs' template and query as the product does
  on the device (rerank/mxbai.py: on a CPU only); then the other way, where a shared prefix is the one kept from the
  warm-ups, as for a search's later calls;
- `forward, padded + mask`: the whole model on the same pairs left-padded with a mask (the reference's way), already
  on the device;
- `forward, full width, no mask`: the same shape without the padding mask (causal attention's fast kernels);
- `forward, rows cut to the shortest, no mask`: no padding at all (fewer tokens; rates say whether padding costs);
- `matmul ceiling`: one bf16 product of the call's tokens x hidden by hidden x intermediate, the biggest GEMM;
- `compiled forward` (`--compile`): torch.compile of the whole model at the padded call's fixed shape, then the
  product's `compile: true` (its blocks, dynamic shapes), with their compile times.

Then torch.profiler over a few padded forwards: device time by kernel kind (GEMM, attention, the rest) and the top
kernels, so the next change goes where the time is.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from benchmarks.gpu_bench import (
    SHAPES,
    add_vocab_argument,
    layer_parameters,
    log,
    peak_tflops,
    sequence_flops,
    synchronize,
    synthetic_texts,
    tokenizer_name,
    vocab_file,
    write_random_qwen2,
)
from rerank.batching import token_batches


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmups: int = 3) -> float:
    for _ in range(warmups):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def left_padded(rows: list[list[int]], pad_id: int, multiple: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = -(-max(map(len, rows)) // multiple) * multiple
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    if any(key in lowered for key in ("fmha", "flash", "attention", "attn", "softmax")):
        return "attention"
    if any(key in lowered for key in ("gemm", "cutlass", "sm90_xmma", "nvjet", "matmul", "cublas", "::mm", "addmm", "bmm")):
        return "GEMM"
    return "other (norms, activations, rotary, copies)"


def profile(forward: Callable[[], Any], device: torch.device, runs: int = 3, top: int = 12) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(runs):
            forward()
        synchronize(device)
    if device.type == "cuda":  # the kernels themselves (copies included), by time on the device
        kernels = [(e.key, e.count, e.self_device_time_total) for e in prof.key_averages()
                   if e.device_type.name == "CUDA" and e.self_device_time_total > 0]
    else:  # no kernels on a CPU: torch's operators, by their own time
        kernels = [(e.key, e.count, e.self_cpu_time_total) for e in prof.key_averages()
                   if e.key.startswith("aten::") and e.self_cpu_time_total > 0]
    total = sum(us for _, _, us in kernels) or 1
    by_kind: dict[str, float] = {}
    for key, _, us in kernels:
        by_kind[kernel_kind(key)] = by_kind.get(kernel_kind(key), 0) + us
    lines = [f"device time per forward: {total / runs / 1000:.2f} ms", "", "| kind | share |", "|---|---:|"]
    lines += [f"| {kind} | {100 * t / total:.1f}% |" for kind, t in sorted(by_kind.items(), key=lambda kv: -kv[1])]
    lines += ["", "| kernel | calls per forward | ms per forward | share |", "|---|---:|---:|---:|"]
    for key, count, us in sorted(kernels, key=lambda k: -k[2])[:top]:
        lines.append(f"| {key[:100]} | {count / runs:.0f} | {us / runs / 1000:.3f} | {100 * us / total:.1f}% |")
    return "\n".join(lines)


def bench(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, peak: float | None,
          workdir: Path) -> None:
    from rerank.mxbai import PAD_MULTIPLE
    from rerank.registry import load_scorer
    from rerank.spec import MxbaiV2Spec

    shape = SHAPES[name]
    folder = workdir / name
    write_random_qwen2(folder, shape, dtype, device, args.vocab)
    spec = MxbaiV2Spec(source=str(folder), device=str(device), dtype=str(dtype).removeprefix(
        "torch."), batch_size=4096, max_batch_tokens=args.call_tokens, compile=False)  # eager: the variants below
    scorer = load_scorer(name, spec)  # run its modules; `--compile` adds the compiled rows
    (folder / "model.safetensors").unlink()
    query = synthetic_texts(folder, 1, 16, seed=1)[0]
    docs = synthetic_texts(folder, 4 * args.call_tokens // args.doc_tokens, args.doc_tokens, seed=7)
    encoded = scorer.encode_pairs([query] * len(docs), docs)
    call = next(iter(token_batches([pair.tokens for pair in encoded], spec.batch_size, args.call_tokens)))
    pairs = [encoded[i] for i in call]
    rows = [pair.ids.tolist() for pair in pairs]
    padded = left_padded(rows, scorer.pad_id, PAD_MULTIPLE, device)
    shortest = min(map(len, rows))
    cut = {"input_ids": torch.stack([torch.tensor(row[-shortest:]) for row in rows]).to(device)}
    params = layer_parameters(shape)
    real = sum(map(len, rows))
    flops = sum(sequence_flops(len(row), shape, params) for row in rows)
    batch, width = padded["input_ids"].shape
    log(f"{name}: one call of {batch} pairs x {width} padded tokens ({real:,} real, {batch * width:,} padded)")
    model = scorer.model

    def forward(inputs: dict[str, torch.Tensor], fn: Any = model) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return fn(**inputs, use_cache=False, logits_to_keep=1).logits
        return run

    table = ["| variant | ms | real tokens/s | TFLOP/s | % of peak |", "|---|---:|---:|---:|---:|"]

    def row(label: str, seconds: float, tokens: int, work: float) -> None:
        share = f"{100 * work / seconds / 1e12 / peak:.1f}%" if peak else "n/a"
        line = f"| {label} | {seconds * 1000:.2f} | {tokens / seconds:,.0f} | {work / seconds / 1e12:.3g} | {share} |"
        log(f"{name}: {line}")
        table.append(line)

    row("score_encoded (product path, uncompiled)", timed(lambda: scorer.score_encoded(pairs), device, args.repeats),
        real, flops)
    shares = scorer.share_prefix  # the product's choice for this device (rerank/mxbai.py); then the other one
    scorer.share_prefix = not shares
    other = "prefix not shared" if shares else "prefix shared (kept from the warm-ups)"
    row(f"score_encoded, {other}", timed(lambda: scorer.score_encoded(pairs), device, args.repeats), real, flops)
    scorer.share_prefix = shares
    row("forward, padded + mask", timed(forward(padded), device, args.repeats), real, flops)
    row("forward, full width, no mask", timed(forward({"input_ids": padded["input_ids"]}), device, args.repeats),
        real, flops)
    cut_flops = batch * sequence_flops(shortest, shape, params)
    row("forward, rows cut to the shortest, no mask", timed(forward(cut), device, args.repeats), batch * shortest,
        cut_flops)
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    a = torch.randn(batch * width, hidden, device=device, dtype=dtype)
    b = torch.randn(hidden, inter, device=device, dtype=dtype)
    row(f"matmul ceiling ({batch * width} x {hidden} x {inter})", timed(lambda: a @ b, device, args.repeats),
        batch * width, 2.0 * batch * width * hidden * inter)
    log(f"{name}: profiling the padded forward")
    kernels = profile(forward(padded), device)
    if args.compile:
        # torch.compile of the whole model on this one shape, then as the product compiles (`compile: true`: each
        # block, dynamic shapes, compiled at load by warm_up), timing a call of another shape to see whether it
        # compiles again.
        compiled = torch.compile(model, dynamic=False)
        start = time.perf_counter()
        forward(padded, compiled)()
        synchronize(device)
        log(f"{name}: compiled for this shape in {time.perf_counter() - start:.0f} s")
        row("compiled forward, this shape only", timed(forward(padded, compiled), device, args.repeats), real, flops)
        del compiled
        torch._dynamo.reset()
        write_random_qwen2(folder, shape, dtype, device, args.vocab)
        start = time.perf_counter()
        product = load_scorer(name, spec.model_copy(update={"compile": True}))
        log(f"{name}: loaded with compile: true (its blocks, dynamic shapes) in {time.perf_counter() - start:.0f} s")
        start = time.perf_counter()
        product.score_encoded(pairs)
        log(f"{name}: first compiled call of this shape: {time.perf_counter() - start:.1f} s")
        row("score_encoded, compile: true", timed(lambda: product.score_encoded(pairs), device, args.repeats), real,
            flops)
        fewer = pairs[: len(pairs) * 3 // 4]
        start = time.perf_counter()
        product.score_encoded(fewer)
        log(f"{name}: first compiled call of another shape ({len(fewer)} pairs): "
            f"{time.perf_counter() - start:.2f} s")
    print(f"\n{name}: one call, {batch} pairs x {width} tokens ({real:,} real); TFLOP/s counts real tokens only\n")
    print("\n".join(table))
    print(f"\n{name}: kernels of the padded forward (torch.profiler)\n")
    print(kernels, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny Qwen2 in float32 (the default without CUDA)")
    parser.add_argument("--models", help="comma list of tiny, base-v2, large-v2 (default: base-v2,large-v2 on a "
                        "GPU, tiny otherwise)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--call-tokens", type=int, help="padded tokens in the call (default: the product's budget "
                        "for the device)")
    parser.add_argument("--doc-tokens", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float)
    parser.add_argument("--compile", action="store_true", help="also torch.compile the call's shape (minutes)")
    add_vocab_argument(parser)
    args = parser.parse_args(argv)
    args.vocab = vocab_file(args.vocab)
    from rerank.loading import pick_device
    from rerank.spec import MxbaiV2Spec

    device = pick_device(args.device)
    tiny = args.tiny or device.type != "cuda"
    models = args.models.split(",") if args.models else ["tiny"] if tiny else ["base-v2", "large-v2"]
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    args.call_tokens = args.call_tokens or MxbaiV2Spec(source="x").batch_tokens(device.type)
    gpu, peak = peak_tflops(device, args.peak_tflops)
    log(f"device: {gpu}; torch {torch.__version__}; dtype {dtype}; peak {peak or 'unknown'} TFLOP/s; "
        f"call {args.call_tokens:,} tokens; {tokenizer_name(args.vocab)}")
    with tempfile.TemporaryDirectory(prefix="rerank-gpu-profile-") as tmp:
        for name in models:
            bench(name, args, device, dtype, peak, Path(tmp))


if __name__ == "__main__":
    main()
