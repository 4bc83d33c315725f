"""Embedding models (sentence-transformers folders or plain encoders): score = cosine(query, document)."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from transformers import AutoModel

from rerank.backend import ModelLoadError
from rerank.loading import TransformersScorer, read_json
from rerank.spec import ModelSpec

POOLING_MODES = ("mean", "cls", "lasttoken")
# sentence-transformers' older 1_Pooling/config.json spells the mode as one boolean per mode.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}


def pooling_mode(config: dict[str, Any] | None) -> str:
    """The pooling a sentence-transformers folder declares; mean when it declares none."""
    if not config:
        return "mean"
    declared = config.get("pooling_mode") or [mode for key, mode in _LEGACY_POOLING_KEYS.items() if config.get(key)]
    modes = [declared] if isinstance(declared, str) else list(declared)
    if not modes:
        return "mean"
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ModelLoadError(f"unsupported pooling {modes} (supported: {', '.join(POOLING_MODES)})")
    return modes[0]


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One vector per sequence; works with left or right padding."""
    if mode == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    first = mask.argmax(1)  # first attended position
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # last attended position
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first if mode == "cls" else last]


class BiEncoderScorer(TransformersScorer):
    def __init__(self, spec: ModelSpec, name: str | None = None) -> None:
        super().__init__(spec, AutoModel, name)
        try:
            self.pooling = pooling_mode(read_json(self.path, "1_Pooling/config.json"))
        except ModelLoadError as exc:
            raise ModelLoadError(f"model {spec.source!r}: {exc}") from exc
        # The length the embedding model was trained for (sentence-transformers truncates there too).
        trained = (read_json(self.path, "sentence_bert_config.json") or {}).get("max_seq_length")
        self.max_length = min(self.max_length, trained or self.max_length)
        self._cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    def _embed(self, texts: list[str]) -> list[torch.Tensor]:
        """One embedding per text, in order; always L2-normalised, Normalize module or not: we score by cosine."""
        vectors: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        for rows, output, mask in self._forward(texts):
            pooled = F.normalize(pool(output.last_hidden_state.float(), mask, self.pooling), dim=-1)
            for i, vector in zip(rows, pooled):
                vectors[i] = vector
        return vectors

    def score(self, query: str, docs: Sequence[str]) -> list[float]:
        return self.score_pairs([query] * len(docs), docs)

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> list[float]:
        """Each distinct query is embedded once, each document once (and kept in the cache), then paired up."""
        if len(queries) != len(docs):
            raise ValueError(f"{len(queries)} queries for {len(docs)} documents")
        if not docs:
            return []
        distinct = {query: row for row, query in enumerate(dict.fromkeys(queries))}
        with torch.inference_mode():
            query_vecs = torch.stack(self._embed(list(distinct)))
            doc_vecs = torch.stack(self._document_vectors(docs))
            rows = torch.tensor([distinct[query] for query in queries], device=query_vecs.device)
            return (doc_vecs * query_vecs[rows]).sum(-1).tolist()

    def _document_vectors(self, docs: Sequence[str]) -> list[torch.Tensor]:
        """Document embeddings do not depend on the query: each text is embedded once and kept in an LRU."""
        keys = [hashlib.blake2b(d.encode("utf-8", "surrogatepass"), digest_size=16).digest() for d in docs]
        found = {k: self._cache[k] for k in keys if k in self._cache}
        new = {k: d for k, d in zip(keys, docs) if k not in found}
        found.update(zip(new, self._embed(list(new.values()))))
        for k in keys:
            self._cache[k] = found[k]
            self._cache.move_to_end(k)
        while len(self._cache) > self.spec.cache_entries:
            self._cache.popitem(last=False)
        return [found[k] for k in keys]
