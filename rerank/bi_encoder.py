"""Embedding models (sentence-transformers folders or plain encoders): score = cosine(query, document)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModel

from rerank.backend import ModelLoadError, text_key
from rerank.loading import Tokenized, TransformersScorer, read_json, tokenize
from rerank.lru import LRU
from rerank.spec import BiEncoderSpec

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


@dataclass(frozen=True, slots=True)
class EmbeddingInput:
    """One text for the bi-encoder: tokenized, unless its embedding was cached when it was encoded."""

    key: bytes
    text: str
    tokenized: Tokenized | None  # None: embedded already


@dataclass(frozen=True, slots=True)
class EmbeddingPair:
    query: EmbeddingInput
    doc: EmbeddingInput

    @property
    def tokens(self) -> int:
        """The document's tokens: a search's query is embedded once for all its pairs, a cached document not at all."""
        return self.doc.tokenized.tokens if self.doc.tokenized is not None else 0


class BiEncoderScorer(TransformersScorer[EmbeddingPair]):
    def __init__(self, spec: BiEncoderSpec, name: str | None = None) -> None:
        super().__init__(spec, AutoModel, name)
        try:
            self.pooling = pooling_mode(read_json(self.path, "1_Pooling/config.json"))
        except ModelLoadError as exc:
            raise ModelLoadError(f"model {spec.source!r}: {exc}") from exc
        # The length the embedding model was trained for (sentence-transformers truncates there too).
        trained = (read_json(self.path, "sentence_bert_config.json") or {}).get("max_seq_length")
        self.max_length = min(self.max_length, trained or self.max_length)
        # A text's embedding does not depend on what it is paired with: each text, query or document, is embedded once
        # and kept in an LRU. Written by the scoring thread only; `_encode` (maybe on the engine's tokenizer thread)
        # only asks what it holds.
        self._cache: LRU[bytes, torch.Tensor] = LRU(spec.cache_entries)

    def _encode(self, tokenizer: Any, queries: Sequence[str], docs: Sequence[str]) -> list[EmbeddingPair]:
        texts = {text_key(text): text for text in dict.fromkeys([*queries, *docs])}
        new = {key: text for key, text in texts.items() if key not in self._cache}
        tokenized = dict(zip(new, tokenize(tokenizer, list(new.values()), max_length=self.max_length)))
        inputs = {text: EmbeddingInput(key, text, tokenized.get(key)) for key, text in texts.items()}
        return [EmbeddingPair(inputs[query], inputs[doc]) for query, doc in zip(queries, docs)]

    def score_encoded(self, pairs: Sequence[EmbeddingPair]) -> list[float]:
        """Cosine of each pair's embeddings; each distinct text embedded once, unless the cache has it."""
        if not pairs:
            return []
        with torch.inference_mode():
            vectors = self._vectors([text for pair in pairs for text in (pair.query, pair.doc)])
            query_vecs = torch.stack([vectors[pair.query.key] for pair in pairs])
            doc_vecs = torch.stack([vectors[pair.doc.key] for pair in pairs])
            return (doc_vecs * query_vecs).sum(-1).tolist()

    def _vectors(self, inputs: Sequence[EmbeddingInput]) -> dict[bytes, torch.Tensor]:
        found = {text.key: vector for text in inputs if (vector := self._cache.get(text.key)) is not None}
        new: dict[bytes, Tokenized] = {}
        for text in inputs:
            if text.key not in found and text.key not in new:
                # Cached when encoded, evicted since: tokenized now, on the scoring thread's own tokenizer.
                new[text.key] = text.tokenized or tokenize(self.tokenizer, [text.text], max_length=self.max_length)[0]
        found.update(zip(new, self._embed(list(new.values()))))
        for key in dict.fromkeys(text.key for text in inputs):  # least recently used goes first
            self._cache.put(key, found[key])
        return found

    def _embed(self, inputs: Sequence[Tokenized]) -> list[torch.Tensor]:
        """One embedding per input, in order; always L2-normalised, Normalize module or not: we score by cosine."""
        vectors: list[torch.Tensor] = [torch.empty(0)] * len(inputs)
        for rows, output, mask in self._forward(inputs):
            pooled = F.normalize(pool(output.last_hidden_state.float(), mask, self.pooling), dim=-1)
            for i, vector in zip(rows, pooled):
                vectors[i] = vector
        return vectors
