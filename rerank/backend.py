"""The one narrow interface every model sits behind.

A backend turns (query, documents) into one float per document, higher = more relevant. It is synchronous and
may block (it runs a model); the engine calls it off the event loop and never concurrently for one backend, except
`count_tokens` and `PairEncoder.encode_pairs`, which may run beside a scoring call (see their docstrings).
`score_pairs` lets the engine pack pairs of several searches into one model call; a backend without it is still
served: the engine groups each micro-batch's pairs by query and calls `score` per group.

A backend that tokenizes (the local ones) is also a `PairEncoder`: the engine then tokenizes each pair once, ahead
of the model, and cuts micro-batches by the exact lengths, as text-embeddings-inference's router does.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(self, query: str, docs: Sequence[str]) -> list[float]:
        """One relevance score per document, in the order given."""
        ...

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> list[float]:
        """One score per pair (queries[i], docs[i]), equal to what `score` gives that pair; the queries may differ."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens the model would see for each text (used for token-budgeted batching). Batched: a tokenizer
        counts many texts in one call faster than one by one. The engine calls it from a thread of its own while
        a `score` call may be running, never twice at once."""
        ...


class Encoding(Protocol):
    """One (query, document) pair as a backend's model will read it; opaque to the engine except its size."""

    @property
    def tokens(self) -> int:
        """Tokens the model runs for this pair: what micro-batch budgets count."""
        ...


@runtime_checkable
class PairEncoder(Protocol):
    """Tokenizing apart from scoring. The engine encodes each search's pairs once on its tokenizer thread while the
    model scores others, packs micro-batches by `Encoding.tokens`, and scores them with `score_encoded` on the
    model thread; `score_pairs(q, d)` is `score_encoded(encode_pairs(q, d))`."""

    def encode_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> Sequence[Encoding]:
        """One encoding per pair (queries[i], docs[i]). May run beside a scoring call, never twice at once."""
        ...

    def score_encoded(self, pairs: Sequence[Any]) -> list[float]:
        """One score per encoding (as `encode_pairs` made them), in order."""
        ...


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the proxy keeps serving and falls back to the cluster's order."""


def text_key(text: str) -> bytes:
    """What caches key a text by: a 16-byte hash, so a long document is not held twice."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
