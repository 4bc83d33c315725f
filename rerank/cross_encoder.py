"""Sequence-classification rerankers on (query, document) pairs (bge-reranker, ms-marco MiniLM, mxbai-rerank-v1).

Scores equal sentence-transformers' `CrossEncoder.predict` defaults for the same folder: the activation the model
saved (ms-marco models save Identity), else sigmoid for one label and the raw logits otherwise; with several labels
the positive class (label 1) is the score.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, Sequence

import torch
from transformers import AutoModelForSequenceClassification

from rerank.loading import TransformersScorer, read_json, token_lengths
from rerank.spec import ModelSpec


def activation(path: str, config: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation sentence-transformers would apply to this model's logits by default."""
    saved = (
        (read_json(path, "config_sentence_transformers.json") or {}).get("activation_fn")
        or (getattr(config, "sentence_transformers", None) or {}).get("activation_fn")
        or getattr(config, "sbert_ce_default_activation_function", None)  # written by sentence-transformers < 4
    )
    # Like sentence-transformers without trust_remote_code, only torch's own activations are honoured.
    if isinstance(saved, str) and saved.startswith("torch."):
        module, _, cls = saved.rpartition(".")
        return getattr(importlib.import_module(module), cls)()
    return torch.sigmoid if config.num_labels == 1 else torch.nn.Identity()


class CrossEncoderScorer(TransformersScorer):
    def __init__(self, spec: ModelSpec, name: str | None = None) -> None:
        super().__init__(spec, AutoModelForSequenceClassification, name)
        self.activation = activation(self.path, self.model.config)
        self.label = 0 if self.model.config.num_labels == 1 else 1
        # The engine sends one search's pairs in several calls: its query is tokenized for this once, not per call.
        self._truncation = functools.lru_cache(maxsize=4096)(self._truncation_for)

    def _truncation_for(self, query: str) -> str:
        """Cut the document and keep the query, unless the query alone would eat most of the budget."""
        return "only_second" if token_lengths(self.tokenizer, [query])[0] <= self.max_length // 2 else "longest_first"

    def score(self, query: str, docs: Sequence[str]) -> list[float]:
        return self.score_pairs([query] * len(docs), docs)

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> list[float]:
        if len(queries) != len(docs):
            raise ValueError(f"{len(queries)} queries for {len(docs)} documents")
        # One tokenizer call takes one truncation strategy, so pairs are grouped by it (nearly always a single group).
        groups: dict[str, list[int]] = {}
        for i, query in enumerate(queries):
            groups.setdefault(self._truncation(query), []).append(i)
        scores = [0.0] * len(docs)
        with torch.inference_mode():
            for truncation, rows in groups.items():
                calls = self._forward([queries[i] for i in rows], [docs[i] for i in rows], truncation)
                for positions, output, _ in calls:
                    # float64 so sigmoid-squashed scores of very relevant documents do not tie at 1.0
                    values = self.activation(output.logits.double())[:, self.label].tolist()
                    for position, value in zip(positions, values):
                        scores[rows[position]] = value
        return scores
