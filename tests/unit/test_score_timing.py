"""The engine's account of one search's scoring (`ScoreTiming`), which the access log and the spans read: the queue
wait as `rerank_queue_wait_seconds` observes it, the model calls that scored the search's pairs, nothing for a search
answered at the door."""
from __future__ import annotations

import asyncio
import itertools
import time

from prometheus_client import REGISTRY

from rerank.engine import ScoreTiming, ScoringEngine
from rerank.spec import CrossEncoderSpec
from tests.scorers import Overlap

_names = itertools.count()


async def started(scorer: Overlap) -> tuple[ScoringEngine, str]:
    name = f"timing{next(_names)}"
    engine = ScoringEngine({name: CrossEncoderSpec(source="test")}, loader=lambda _name, _spec: scorer)
    await engine.start()
    return engine, name


def queue_wait_sum(model: str) -> float:
    return REGISTRY.get_sample_value("rerank_queue_wait_seconds_sum", {"model": model}) or 0.0


async def test_a_searchs_queue_wait_and_model_calls_are_its_own() -> None:
    scorer = Overlap()
    engine, model = await started(scorer)
    try:
        before = time.perf_counter()
        timing = ScoreTiming()
        assert await engine.score(model, "apple pie", ["apple tart", "pie crust"], 5, timing) == [1.0, 1.0]
        after = time.perf_counter()
        assert timing.enqueued is not None and timing.queue_s is not None
        assert timing.model_started is not None and timing.model_ended is not None
        assert before <= timing.enqueued <= timing.enqueued + timing.queue_s <= timing.model_started
        assert timing.model_started < timing.model_ended <= after
        assert 0 < timing.model_s <= timing.model_ended - timing.model_started + 1e-9
        assert queue_wait_sum(model) == timing.queue_s  # the one search the metric has seen: the same measure
    finally:
        await engine.close()


async def test_a_search_shares_a_model_call_without_counting_it_twice() -> None:
    scorer = Overlap()
    engine, model = await started(scorer)
    try:
        scorer.calls.clear()
        first, second = ScoreTiming(), ScoreTiming()
        await asyncio.gather(engine.score(model, "a b", ["a", "b", "c"], 5, first),
                             engine.score(model, "c d", ["c", "d"], 5, second))
        assert len(scorer.calls) == 1  # one micro-batch for both
        assert first.model_s == second.model_s > 0
        assert (first.model_started, first.model_ended) == (second.model_started, second.model_ended)
    finally:
        await engine.close()


async def test_a_search_answered_from_the_score_cache_never_queued() -> None:
    scorer = Overlap()
    engine, model = await started(scorer)
    try:
        await engine.score(model, "apple pie", ["apple tart"], 5)
        timing = ScoreTiming()
        assert await engine.score(model, "apple pie", ["apple tart"], 5, timing) == [1.0]
        assert (timing.enqueued, timing.queue_s, timing.model_s, timing.model_started) == (None, None, 0.0, None)
    finally:
        await engine.close()
