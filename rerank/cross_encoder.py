"""Sequence-classification rerankers on (query, document) pairs (bge-reranker, ms-marco MiniLM, mxbai-rerank-v1).

Scores equal sentence-transformers' `CrossEncoder.predict` defaults for the same folder: the activation the model
saved (ms-marco models save Identity), else sigmoid for one label and the raw logits otherwise; with several labels
the positive class (label 1) is the score.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from rerank.loading import Tokenized, TransformersScorer, read_json, token_lengths, tokenize
from rerank.spec import CrossEncoderSpec


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
        activation: Callable[[torch.Tensor], torch.Tensor] = getattr(importlib.import_module(module), cls)()
        return activation
    return torch.sigmoid if config.num_labels == 1 else torch.nn.Identity()


class CrossEncoderScorer(TransformersScorer[Tokenized]):
    def __init__(self, spec: CrossEncoderSpec, name: str | None = None) -> None:
        super().__init__(spec, AutoModelForSequenceClassification, name)
        self.activation = activation(self.path, self.model.config)
        self.label = 0 if self.model.config.num_labels == 1 else 1

    def _encode(self, tokenizer: Any, queries: Sequence[str], docs: Sequence[str]) -> list[Tokenized]:
        # Cut the document and keep the query, unless the query alone would eat most of the budget. One tokenizer
        # call takes one truncation strategy, so pairs are grouped by it (nearly always a single group).
        distinct = list(dict.fromkeys(queries))
        lengths = token_lengths(tokenizer, distinct)
        keeps_query = {query: n <= self.max_length // 2 for query, n in zip(distinct, lengths)}
        groups: dict[str, list[int]] = {}
        for i, query in enumerate(queries):
            groups.setdefault("only_second" if keeps_query[query] else "longest_first", []).append(i)
        encoded: list[Tokenized] = [Tokenized({})] * len(docs)
        for truncation, rows in groups.items():
            found = tokenize(tokenizer, [queries[i] for i in rows], [docs[i] for i in rows],
                             max_length=self.max_length, truncation=truncation)
            for i, pair in zip(rows, found):
                encoded[i] = pair
        return encoded

    def score_encoded(self, pairs: Sequence[Tokenized]) -> list[float]:
        scores = [0.0] * len(pairs)
        with torch.inference_mode():
            for positions, output, _ in self._forward(pairs):
                # float64 so sigmoid-squashed scores of very relevant documents do not tie at 1.0
                values = self.activation(output.logits.double())[:, self.label].tolist()
                for position, value in zip(positions, values):
                    scores[position] = value
        return scores
