#!/usr/bin/env bash
# A lent GPU session's measurements in one device call: a machine's start costs minutes of a 15-minute budget, so
# the steps go together, each under its own time limit (together 570 s, under the 600 s a call may run) and with its
# own log in OUTDIR; a step that fails or runs out of time does not stop the next.
#
#   bash benchmarks/gpu.sh --fetch-wheels              # here, with network: wheels + Qwen's vocabulary
#   bash benchmarks/gpu_session.sh "$OUT"              # on the GPU machine: carry .cache/gpu-wheels, .cache/qwen.tiktoken
#   bash benchmarks/gpu_session.sh /tmp/session --tiny # anywhere: the same steps on a tiny Qwen2 (a few minutes)
#
# Steps, the most wanted first:
#   compiled  base-v2 compiled, as the product runs on CUDA (`compile: auto`): its compile time at load, s/query at
#             64 and 100 pairs per call, and the engine compiled (compiled.json)
#   bench     base-v2 and large-v2 uncompiled: s/query at 64 and 100 pairs per call, then the engine (bench.json)
#   profile   base-v2: one call and its variants, whole-shape and per-block compile, kernels by kind
set -uo pipefail

OUT="${1:?usage: gpu_session.sh OUTDIR [--tiny]}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$OUT"
if [[ "${2:-}" == "--tiny" ]]; then
  small=(--models tiny --queries 1 --docs 8 --doc-tokens 40 --concurrency 2 --engine-budgets 1024)
  one=("${small[@]}")
  both=("${small[@]}")
  call=(--models tiny --call-tokens 512 --doc-tokens 40 --repeats 1)
else
  one=(--models base-v2)
  both=()  # gpu_bench's default on a GPU: base-v2 and large-v2
  call=(--models base-v2)
fi

failed=0
step() {  # name, time limit in seconds, gpu.sh's arguments
  local name=$1 limit=$2 status
  shift 2
  echo "gpu_session: $name, at most $limit s: gpu.sh $*" >&2
  # transformers' per-tensor "Loading weights" progress lines would drown the log.
  timeout "$limit" bash "$HERE/gpu.sh" "$@" 2>&1 | grep --line-buffered -v "Loading weights" | tee "$OUT/$name.log"
  status=${PIPESTATUS[0]}
  if ((status != 0)); then
    echo "gpu_session: $name failed with exit status $status$( ((status == 124)) && echo ' (out of time)')" >&2
    failed=1
  fi
}

step compiled 200 "${one[@]}" --compile on --batch-sizes 64,100 --json "$OUT/compiled.json"
step bench 200 "${both[@]}" --compile off --batch-sizes 64,100 --json "$OUT/bench.json"
step profile 170 --profile "${call[@]}" --compile
exit "$failed"
