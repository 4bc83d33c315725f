"""A fake scorer for the engine's tests: deterministic scores, calls recorded, held and failed on demand."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence


def overlap(query: str, doc: str) -> float:
    return float(len(set(query.split()) & set(doc.split())))


class Overlap:
    """Score = words shared by query and document; tokens = words. Records each call; a call waits while `gate`
    is clear, after signalling `entered`; a batch holding a query in `fail_on` raises."""

    name = "overlap"

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on: set[str] = set()  # queries whose batch raises
        self.counted: list[list[str]] = []
        self.counting = threading.Event()  # set by every count_tokens (or encode_pairs) call

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        self.counted.append(list(texts))
        self.counting.set()
        return [len(text.split()) for text in texts]

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> list[float]:
        self.calls.append(list(zip(queries, docs)))
        self.entered.set()
        assert self.gate.wait(10), "test never released the model"
        if self.fail_on & set(queries):
            raise RuntimeError("model blew up")
        return [overlap(q, d) for q, d in zip(queries, docs)]

    def score(self, query: str, docs: Sequence[str]) -> list[float]:
        return self.score_pairs([query] * len(docs), docs)

    def hold(self) -> None:
        """The next call blocks until `release`."""
        self.entered.clear()
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    async def busy(self) -> None:
        """Wait (without blocking the event loop) until a held call has started."""
        assert await asyncio.to_thread(self.entered.wait, 10), "the model was never called"
