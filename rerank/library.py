"""`rerank` as a library: load a reranker by model id or folder and rank documents from a script or a notebook.

    from rerank import load

    reranker = load("mixedbread-ai/mxbai-rerank-base-v2")
    for hit in reranker.rank("what causes scurvy?", documents, top_k=3, return_documents=True):
        print(hit.index, round(hit.score, 3), hit.document)

It runs the proxy's own backends (rerank/registry.py), on the caller's thread and without the engine's queue:
`predict` hands its distinct pairs to the backend's `score_pairs` a slice at a time, and the backend tokenizes each
pair once and cuts its model calls by the one rule the engine's micro-batches follow (rerank/batching.py: shortest
first, padded tokens within `max_batch_tokens`, pairs within `batch_size`). A score is the one the engine gives the
same pair on the same spec.

Which backend a source needs (`kind`) is read from its config.json when it can be had (a local folder, a
`package:NAME` model, the Hugging Face cache or hub): a Qwen2 causal LM is an mxbai-rerank-v2 model (the only causal
LM the backends run), a `*ForSequenceClassification` a cross-encoder, a sentence-transformers folder or a bare
encoder (`BertModel`) a bi-encoder. Without a config.json (offline, not cached) the id's name decides:
`mxbai-rerank-*-v2` is mxbai-v2, a name with `rerank` in it or under `cross-encoder/` a cross-encoder. An http(s)
URL is a `remote` reranking service. `kind=` overrides all of it.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, get_args

from rerank.backend import Scorer
from rerank.chunking import Chunking, chunk_documents
from rerank.registry import load_scorer
from rerank.spec import LOCAL_BACKENDS, SPEC_TYPES, Backend, ModelSpec

# What the engine's queue, cache, breaker and language gate read: meaningless here, where nothing queues.
ENGINE_ONLY_OPTIONS = frozenset({
    "max_wait_ms", "score_cache_entries", "max_queue", "load_retry_s", "load_retry_max_s", "circuit", "languages",
})
# Pairs tokenized and length-sorted together. It bounds memory: a tokenizer hands its ids back as Python lists (about
# 36 bytes a token), so 100,000 documents of 512 tokens at once would take some 2 GB before the first model call.
PAIRS_PER_SLICE = 8_192

_MXBAI_V2_NAME = re.compile(r"mxbai-rerank-[a-z]+-v2", re.IGNORECASE)
_CROSS_ENCODER_NAME = re.compile(r"rerank|^cross-encoder/", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RankedResult:
    """One document of a `rank` call: its position in the documents given, its score, and, with
    `return_documents=True`, its text."""

    index: int
    score: float
    document: str | None = None


def _kind_from_config(config: Mapping[str, Any], is_sentence_transformers: bool) -> Backend | None:
    architectures = [str(name) for name in config.get("architectures") or []]
    if config.get("model_type") == "qwen2" and any(name.endswith("ForCausalLM") for name in architectures):
        return "mxbai-v2"
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return "cross-encoder"
    if is_sentence_transformers or any(_is_bare_model(name) for name in architectures):
        return "bi-encoder"
    return None


def _is_bare_model(architecture: str) -> bool:
    """A transformer without a head (BertModel, XLMRobertaModel), as embedding models are saved; not
    GPT2LMHeadModel nor BertForMaskedLM."""
    return architecture.endswith("Model") and "LMHead" not in architecture and "For" not in architecture


def _kind_from_name(source: str) -> Backend | None:
    if _MXBAI_V2_NAME.search(source):
        return "mxbai-v2"
    if _CROSS_ENCODER_NAME.search(source):
        return "cross-encoder"
    return None


def infer_kind(source: str) -> Backend:
    """The backend `source` needs (see the module docstring); ValueError when neither its config nor its name
    tells, ModelLoadError when it names a folder or package that is not there."""
    if source.startswith(("http://", "https://")):
        return "remote"
    from rerank.loading import read_json, resolve_source  # torch and transformers: only once a model is wanted

    path = resolve_source(source)
    try:
        config = read_json(path, "config.json")
        modules = read_json(path, "modules.json") if config is not None else None
    except OSError:  # the hub refused (gated, private): the name may still tell, else from_pretrained will say why
        config = modules = None
    kind = _kind_from_config(config, modules is not None) if config is not None else _kind_from_name(source)
    if kind is None:
        what = f"architectures {config.get('architectures')}" if config is not None else "no config.json reachable"
        raise ValueError(f"cannot tell which backend model {source!r} needs ({what}): pass kind= one of "
                         f"{', '.join(SPEC_TYPES)}")
    return kind


def model_spec(source: str, *, kind: str | None = None, device: str = "auto", dtype: str | None = None,
               max_length: int | None = None, batch_size: int | None = None, **options: Any) -> ModelSpec:
    """The spec `load` loads: the backend's own type, with only the fields given set (so each backend's defaults
    apply to the rest, e.g. mxbai-v2's 8k budget and bfloat16 on a GPU). ValueError for a bad option or value,
    TypeError for an engine setting (`ENGINE_ONLY_OPTIONS`)."""
    engine_only = sorted(ENGINE_ONLY_OPTIONS.intersection(options))
    if engine_only:
        raise TypeError(f"{', '.join(engine_only)}: settings of the proxy's engine, which a library call does not use")
    if kind is None:
        kind = infer_kind(source)
    elif kind not in get_args(Backend):
        raise ValueError(f"kind {kind!r}: not a backend (known: {', '.join(SPEC_TYPES)})")
    fields: dict[str, Any] = {"source": source, **options}
    if kind in LOCAL_BACKENDS:
        fields["device"] = device
    given = {"dtype": dtype, "max_length": max_length, "batch_size": batch_size}
    fields.update({key: value for key, value in given.items() if value is not None})
    return SPEC_TYPES[kind].model_validate(fields)


def load(source: str, *, kind: str | None = None, device: str = "auto", dtype: str | None = None,
         max_length: int | None = None, batch_size: int | None = None,
         chunking: Chunking | Mapping[str, Any] | None = None, **options: Any) -> Reranker:
    """A loaded, warmed-up reranker for `source`: a Hugging Face hub id, a local model folder, `package:NAME` (a
    model folder inside an installed Python package) or a reranking service's base URL.

    `kind`: the backend (bi-encoder, cross-encoder, mxbai-v2, remote), inferred when omitted (module docstring).
    `device`: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps. `dtype`, `max_length` (tokens per pair),
    `batch_size` (pairs per model call): the backend's defaults when omitted. `chunking`: score a long document by
    its best chunk (`rerank.chunking.Chunking` or its fields); off by default. Every other keyword is a field of the
    backend's spec (rerank/spec.py), e.g. `max_batch_tokens`, `instruction` (mxbai-v2), `compile`, `threads`."""
    spec = model_spec(source, kind=kind, device=device, dtype=dtype, max_length=max_length, batch_size=batch_size,
                      **options)
    chunks = chunking if chunking is None or isinstance(chunking, Chunking) else Chunking.model_validate(chunking)
    return Reranker(load_scorer(source, spec), spec, chunking=chunks)


def _as_pairs(pairs: Sequence[Sequence[str]] | tuple[str, Sequence[str]]) -> tuple[list[str], list[str]]:
    """(queries, documents) from a list of (query, document) pairs or from one (query, documents)."""
    query = pairs[0] if isinstance(pairs, tuple) and len(pairs) == 2 else None
    if isinstance(query, str):
        texts = pairs[1]
        if isinstance(texts, str):  # iterating it would score each character
            raise TypeError("one (query, document) pair: pass it in a list, [(query, document)]")
        return [query] * len(texts), _texts(texts, "documents")
    queries: list[str] = []
    docs = []
    for pair in pairs:
        if isinstance(pair, str) or len(pair) != 2:
            raise TypeError(f"a pair is (query, document), got {pair!r}")
        queries.append(pair[0])
        docs.append(pair[1])
    return _texts(queries, "queries"), _texts(docs, "documents")


def _texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{what}: a sequence of strings, not one string")
    found = list(texts)
    for text in found:
        if not isinstance(text, str):
            raise TypeError(f"{what}: every one must be a string, got {type(text).__name__}")
    return found


class Reranker:
    """A loaded model: `predict` scores pairs, `rank` orders documents for one query. Not for use by several threads
    at once (the model runs on the caller's thread). `close()` (or a `with` block) lets its memory go."""

    def __init__(self, scorer: Scorer, spec: ModelSpec, *, chunking: Chunking | None = None) -> None:
        self._scorer: Scorer | None = scorer
        self.spec = spec
        self.chunking = chunking

    @property
    def scorer(self) -> Scorer:
        """The backend scoring the pairs (rerank/backend.py)."""
        if self._scorer is None:
            raise RuntimeError(f"reranker {self.spec.source!r} is closed")
        return self._scorer

    def __repr__(self) -> str:
        state = "closed" if self._scorer is None else "loaded"
        return f"Reranker({self.spec.source!r}, kind={self.spec.backend!r}, {state})"

    def predict(self, pairs: Sequence[Sequence[str]] | tuple[str, Sequence[str]], *,
                instruction: str | None = None) -> list[float]:
        """One score per pair, in order, higher = more relevant: `pairs` is a list of (query, document) or one
        (query, documents). `instruction` (mxbai-v2 only) replaces the loaded model's own for this call."""
        queries, docs = _as_pairs(pairs)
        scorer = self._instructed(instruction)
        if self.chunking is None:
            return self._score(scorer, queries, docs)
        chunked = chunk_documents(docs, self.chunking)
        scores, _ = chunked.best(len(docs), self._score(scorer, [queries[i] for i in chunked.owners], chunked.texts))
        return [score for score in scores if score is not None]  # every document has a chunk: none is None

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None, return_documents: bool = False,
             instruction: str | None = None) -> list[RankedResult]:
        """The documents best first (equal scores in the order given), the best `top_k` of them when given; each
        result's `index` is its position in `documents`."""
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k: a positive integer or None, got {top_k!r}")
        if not isinstance(query, str):
            raise TypeError(f"query: a string, got {type(query).__name__}")
        docs = _texts(documents, "documents")
        scores = self.predict((query, docs), instruction=instruction)
        order = sorted(range(len(docs)), key=lambda i: -scores[i])[:top_k]
        return [RankedResult(i, scores[i], docs[i] if return_documents else None) for i in order]

    def close(self) -> None:
        """Release the model (and a remote backend's connections); calls after it raise RuntimeError."""
        scorer, self._scorer = self._scorer, None
        closer = getattr(scorer, "close", None)
        if callable(closer):
            closer()

    def __enter__(self) -> Reranker:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _instructed(self, instruction: str | None) -> Scorer:
        scorer = self.scorer
        if instruction is None:
            return scorer
        if not instruction:
            raise ValueError("instruction: empty (pass None for the model's own)")
        with_instruction = getattr(scorer, "with_instruction", None)
        if with_instruction is None:
            raise ValueError(f"model {self.spec.source!r} ({self.spec.backend}) takes no instruction: only mxbai-v2 "
                             "models do")
        instructed: Scorer = with_instruction(instruction)
        return instructed

    @staticmethod
    def _score(scorer: Scorer, queries: list[str], docs: list[str]) -> list[float]:
        """Each distinct pair scored once (so equal pairs tie exactly, and `rank` keeps their order), a slice of
        pairs per `score_pairs` call."""
        distinct = list(dict.fromkeys(zip(queries, docs)))
        scores: dict[tuple[str, str], float] = {}
        for start in range(0, len(distinct), PAIRS_PER_SLICE):
            pairs = distinct[start : start + PAIRS_PER_SLICE]
            found = scorer.score_pairs([query for query, _ in pairs], [doc for _, doc in pairs])
            if len(found) != len(pairs):
                raise RuntimeError(f"backend returned {len(found)} scores for {len(pairs)} pairs")
            scores.update(zip(pairs, map(float, found)))
        return [scores[pair] for pair in zip(queries, docs)]
