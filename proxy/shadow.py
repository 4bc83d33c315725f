"""Shadow scoring: a sample of the reranked searches' windows scored again by a second model, after the client's
answer has gone, to see how far its order would differ from the one served.

Off the response path by construction: `offer` only decides and starts a task; the task's first step runs after the
answer is written. Dropped, never queued, under load: a shadow search starts only while no client search waits for
a model (the engine's in-flight count holds nothing but shadows) and fewer than `shadow_max_in_flight` shadows run;
otherwise it is counted as dropped and forgotten. It is fused with the cluster's scores as the served model was, so
the comparison is between two served orders, not between two raw score lists.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rerank.engine import ScoringEngine
from rerank.ranking import rank

from . import metrics
from .agreement import Agreement, agreement
from .config import Shadow
from .search import Rerank, Scored

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowResult:
    model: str
    order: list[int]  # the window's positions in the shadow's order
    agreement: Agreement
    took_ms: float


def served_window(scored: Scored) -> list[int]:
    """The window's positions in the order they were served."""
    window = len(scored.texts)
    return [hit.position for hit in scored.ranking if hit.position < window]


class ShadowScoring:
    def __init__(self, max_in_flight: int, rng: Callable[[], float] = random.random):
        self.max_in_flight = max_in_flight
        self.rng = rng
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def offer(self, engine: ScoringEngine, plan: Rerank, scored: Scored,
              on_result: Callable[[ShadowResult], None] | None = None) -> bool:
        """Starts the shadow scoring of a served search when its sample and the load allow; whether it started."""
        shadow = plan.settings.shadow
        if shadow is None or not scored.texts or not scored.status.startswith(("reranked", "partial")):
            return False
        if self.rng() >= shadow.sample:
            return False
        if self.in_flight >= self.max_in_flight:
            metrics.SHADOWS.inc(shadow.model, "dropped-full")
            return False
        if engine.in_flight() > self.in_flight:  # a client's search waits for a model: it comes first
            metrics.SHADOWS.inc(shadow.model, "dropped-busy")
            return False
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._score(engine, shadow, plan, scored, on_result))
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return True

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.in_flight -= 1

    async def _score(self, engine: ScoringEngine, shadow: Shadow, plan: Rerank, scored: Scored,
                     on_result: Callable[[ShadowResult], None] | None) -> None:
        started = time.perf_counter()
        try:
            scores: Sequence[float | None] = await engine.score(
                shadow.model, plan.query, scored.texts, shadow.timeout_ms / 1000)
        except Exception as err:  # a shadow's trouble is its own: counted, never anyone's failure
            metrics.SHADOWS.inc(shadow.model, "failed")
            log.debug("shadow model %s failed: %s", shadow.model, type(err).__name__)
            return
        took_ms = (time.perf_counter() - started) * 1000
        window = len(scored.texts)
        ranking = rank(scored.cluster_scores[:window], scores, plan.settings.fusion)
        order = [hit.position for hit in ranking]
        measured = agreement(served_window(scored), order)
        metrics.SHADOWS.inc(shadow.model, "scored")
        metrics.SHADOW_SECONDS.labels(shadow.model).observe(took_ms / 1000)
        metrics.SHADOW_AGREEMENT.labels(shadow.model, "overlap_at_10").observe(measured.overlap_at_10)
        metrics.SHADOW_AGREEMENT.labels(shadow.model, "kendall_tau").observe(measured.kendall_tau)
        metrics.SHADOW_AGREEMENT.labels(shadow.model, "rbo").observe(measured.rbo)
        if on_result is not None:
            on_result(ShadowResult(shadow.model, order, measured, took_ms))

    async def close_when_idle(self) -> None:
        """Waits for the shadow searches running now to finish (tests, and a graceful drain)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
