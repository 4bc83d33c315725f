"""The one narrow interface every model sits behind.

A backend turns (query, documents) into one float per document, higher = more relevant. It is synchronous and
may block (it runs a model); the engine calls it off the event loop and never concurrently for one backend, except
`count_tokens`, which may run beside a scoring call (see its docstring).
`score_pairs` lets the engine pack pairs of several searches into one model call; a backend without it is still
served: the engine groups each micro-batch's pairs by query and calls `score` per group.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable


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


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the proxy keeps serving and falls back to the cluster's order."""
