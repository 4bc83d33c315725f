"""The per-model circuit breaker: the pure state machine under a hand-stepped clock, then wired into the engine
(CircuitOpen, what counts as a failed search, states, readiness, metrics). A word-overlap scorer stands in for the
model, as in test_engine.py; a threading.Event holds its calls where a test needs the model busy."""
from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from rerank.circuit import CircuitBreaker
from rerank.engine import CircuitOpen, ModelUnavailable, Overloaded, ScoringEngine
from rerank.spec import CircuitSettings, CrossEncoderSpec, RemoteSpec
from tests.scorers import Overlap

_names = itertools.count()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ---- the state machine ----------------------------------------------------------------------------------------
def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        ticket = breaker.allow()
        assert ticket is not None
        breaker.record(ticket, False)


def succeed(breaker: CircuitBreaker) -> None:
    ticket = breaker.allow()
    assert ticket is not None
    breaker.record(ticket, True)


def test_the_breaker_opens_after_the_configured_consecutive_failures() -> None:
    breaker = CircuitBreaker(failures=3, open_s=10, clock=Clock())
    fail(breaker, 2)
    assert breaker.state == "closed" and breaker.consecutive_failures == 2
    fail(breaker)
    assert breaker.state == "open" and breaker.code == 2 and breaker.opened_total == 1
    assert breaker.allow() is None


def test_a_success_while_closed_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(failures=3, open_s=10, clock=Clock())
    fail(breaker, 2)
    succeed(breaker)
    assert breaker.consecutive_failures == 0
    fail(breaker, 2)
    assert breaker.state == "closed"


def test_an_outcome_that_says_nothing_about_the_model_neither_counts_nor_resets() -> None:
    breaker = CircuitBreaker(failures=2, open_s=10, clock=Clock())
    fail(breaker)
    ticket = breaker.allow()
    assert ticket is not None
    breaker.record(ticket, None)  # e.g. refused as overloaded, or the caller left
    assert breaker.consecutive_failures == 1 and breaker.state == "closed"


def test_after_open_s_the_breaker_is_half_open_and_lets_exactly_one_trial_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, open_s=30, clock=clock)
    fail(breaker)
    clock.advance(29.9)
    assert breaker.state == "open" and breaker.allow() is None
    assert breaker.retry_in() == pytest.approx(0.1)
    clock.advance(0.1)
    assert breaker.state == "half-open" and breaker.code == 1
    trial = breaker.allow()
    assert trial is not None and trial.trial
    assert breaker.allow() is None and breaker.allow() is None  # only the one trial while it is in flight
    assert breaker.state == "half-open"


def test_a_successful_trial_closes_the_breaker() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=2, open_s=5, clock=clock)
    fail(breaker, 2)
    clock.advance(5)
    trial = breaker.allow()
    assert trial is not None
    breaker.record(trial, True)
    assert breaker.state == "closed" and breaker.code == 0 and breaker.consecutive_failures == 0
    assert breaker.allow() is not None and breaker.allow() is not None


def test_a_failed_trial_reopens_the_breaker_for_another_open_s() -> None:
    clock = Clock()
    opened: list[float] = []
    breaker = CircuitBreaker(failures=1, open_s=5, clock=clock, on_open=lambda: opened.append(clock.now))
    fail(breaker)
    clock.advance(5)
    trial = breaker.allow()
    assert trial is not None
    breaker.record(trial, False)
    assert breaker.state == "open" and breaker.opened_total == 2 and opened == [1000.0, 1005.0]
    clock.advance(4.9)
    assert breaker.allow() is None
    clock.advance(0.1)
    assert breaker.state == "half-open"


def test_a_trial_that_says_nothing_frees_the_slot_for_another_trial() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, open_s=5, clock=clock)
    fail(breaker)
    clock.advance(5)
    trial = breaker.allow()
    assert trial is not None
    breaker.record(trial, None)  # overloaded, say: no verdict on the model
    assert breaker.state == "half-open"
    assert breaker.allow() is not None


def test_outcomes_of_searches_admitted_before_the_breaker_opened_are_ignored() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, open_s=5, clock=clock)
    slow = breaker.allow()  # admitted while closed, finishes after the breaker opened
    assert slow is not None
    fail(breaker)
    breaker.record(slow, True)
    assert breaker.state == "open"  # a stale success does not close it
    clock.advance(5)
    trial = breaker.allow()
    assert trial is not None
    breaker.record(slow, False)  # nor does a stale failure pass for the trial's
    assert breaker.allow() is None  # the trial is still the one in flight
    breaker.record(trial, True)
    assert breaker.state == "closed"


def test_a_disabled_breaker_never_opens() -> None:
    breaker = CircuitBreaker(failures=1, open_s=5, enabled=False, clock=Clock())
    fail(breaker, 10)
    assert breaker.state == "closed" and breaker.allow() is not None and breaker.opened_total == 0


def test_circuit_settings_defaults_and_validation() -> None:
    spec = CrossEncoderSpec(source="x")
    assert spec.circuit == CircuitSettings(enabled=True, failures=5, open_s=10.0)
    # not a remote-only field: fine on a local backend, and on a remote one
    assert CrossEncoderSpec(source="x", circuit={"failures": 2}).circuit.failures == 2
    assert RemoteSpec(source="http://r:7997", circuit={"open_s": 1}).circuit.open_s == 1
    for bad in ({"failures": 0}, {"open_s": 0}, {"unknown": 1}):
        with pytest.raises(ValidationError, match="circuit"):
            CrossEncoderSpec(source="x", circuit=bad)


# ---- in the engine ----------------------------------------------------------------------------------------------
async def serving(scorer: Overlap, clock: Clock, max_queue: int = 256, **circuit: object) -> tuple[ScoringEngine, str]:
    name = f"c{next(_names)}"
    spec = CrossEncoderSpec(source="test", circuit=circuit)
    engine = ScoringEngine({name: spec}, loader=lambda _name, _spec: scorer, max_queue=max_queue, clock=clock)
    await engine.start()
    return engine, name


async def test_the_engine_refuses_with_circuit_open_after_consecutive_model_errors() -> None:
    scorer, clock = Overlap(), Clock()
    engine, m = await serving(scorer, clock, failures=3, open_s=30)
    assert metric("rerank_model_circuit_state", model=m) == 0
    scorer.fail_on = {"boom"}
    for i in range(3):
        with pytest.raises(RuntimeError, match="blew up"):
            await engine.score(m, "boom", [f"doc {i}"], 5)
    calls = len(scorer.calls)
    with pytest.raises(CircuitOpen, match="circuit open") as refused:
        await engine.score(m, "fine", ["fine"], 5)
    assert isinstance(refused.value, ModelUnavailable)  # still a fallback for anyone catching the base class
    assert len(scorer.calls) == calls  # refused before reaching the model
    assert engine.states() == {m: "circuit-open"}
    assert engine.loaded and not engine.ready
    assert metric("rerank_model_circuit_state", model=m) == 2
    assert metric("rerank_model_circuit_opened_total", model=m) == 1
    assert metric("rerank_rejected_total", model=m, reason="circuit-open") == 1
    assert metric("rerank_model_up", model=m) == 1  # loaded, whatever its circuit
    await engine.close()


async def test_a_search_served_wholly_from_the_score_cache_is_answered_while_the_circuit_is_open() -> None:
    scorer, clock = Overlap(), Clock()
    engine, m = await serving(scorer, clock, failures=1)
    assert await engine.score(m, "a b", ["a", "b c"], 5) == [1.0, 1.0]
    scorer.fail_on = {"boom"}
    with pytest.raises(RuntimeError):
        await engine.score(m, "boom", ["x"], 5)
    assert engine.states() == {m: "circuit-open"}
    assert await engine.score(m, "a b", ["a", "b c"], 5) == [1.0, 1.0]  # no model needed
    with pytest.raises(CircuitOpen):
        await engine.score(m, "a b", ["a", "new"], 5)
    await engine.close()


async def test_a_search_that_scored_nothing_by_its_deadline_counts_as_a_failure() -> None:
    scorer, clock = Overlap(), Clock()
    engine, m = await serving(scorer, clock, failures=1)
    scorer.hold()
    try:
        with pytest.raises(TimeoutError):
            await engine.score(m, "q", ["q"], 0.05)
    finally:
        scorer.release()
    assert engine.states() == {m: "circuit-open"}
    await engine.close()


async def test_a_partial_search_counts_as_a_failure() -> None:
    scorer, clock = Overlap(), Clock()
    name = f"c{next(_names)}"
    spec = CrossEncoderSpec(source="test", batch_size=1, circuit={"failures": 1})
    engine = ScoringEngine({name: spec}, loader=lambda _n, _s: scorer, clock=clock)
    await engine.start()
    original = scorer.score_pairs

    def hold_second_call(queries: Sequence[str], docs: Sequence[str]) -> list[float]:
        if scorer.calls:  # the first call (a, alone in its micro-batch) goes through; the next is held
            scorer.hold()
        return original(queries, docs)

    scorer.calls.clear()  # the warm-up call
    scorer.score_pairs = hold_second_call  # type: ignore[method-assign]
    try:
        assert await engine.score(name, "a b", ["a", "a b"], 0.3) == [1.0, None]
    finally:
        scorer.release()
    assert engine.states() == {name: "circuit-open"}
    await engine.close()


async def test_searches_refused_as_overloaded_do_not_count_as_failures() -> None:
    scorer, clock = Overlap(), Clock()
    engine, m = await serving(scorer, clock, max_queue=1, failures=1)
    scorer.hold()
    busy = asyncio.create_task(engine.score(m, "q", ["q"], 10))
    await scorer.busy()
    for i in range(3):
        with pytest.raises(Overloaded):
            await engine.score(m, "other", [f"other {i}"], 10)
    assert engine.states() == {m: "ready"} and engine.ready
    scorer.release()
    assert await busy == [1.0]
    assert engine.states() == {m: "ready"}
    assert metric("rerank_model_circuit_opened_total", model=m) == 0
    await engine.close()


async def test_a_success_between_failures_keeps_the_circuit_closed() -> None:
    scorer, clock = Overlap(), Clock()
    engine, m = await serving(scorer, clock, failures=2)
    scorer.fail_on = {"boom"}
    for query in ("boom", "fine", "boom", "fine again", "boom"):
        try:
            await engine.score(m, query, [query], 5)
        except RuntimeError:
            pass
    assert engine.states() == {m: "ready"}
    await engine.close()


async def test_half_open_lets_one_trial_search_through_and_its_success_closes_the_circuit() -> None:
    scorer, clock = Overlap(), Clock()
    engine, m = await serving(scorer, clock, failures=1, open_s=10)
    scorer.fail_on = {"boom"}
    with pytest.raises(RuntimeError):
        await engine.score(m, "boom", ["d"], 5)
    clock.advance(10)
    assert engine.states() == {m: "half-open"} and engine.ready  # a trial may go: ready for traffic
    assert metric("rerank_model_circuit_state", model=m) == 1
    scorer.hold()
    trial = asyncio.create_task(engine.score(m, "trial", ["trial doc"], 10))
    await scorer.busy()
    with pytest.raises(CircuitOpen, match="half-open"):
        await engine.score(m, "other", ["other doc"], 10)
    scorer.release()
    assert await trial == [1.0]
    assert engine.states() == {m: "ready"}
    assert metric("rerank_model_circuit_state", model=m) == 0
    assert await engine.score(m, "other", ["other doc"], 10) == [1.0]
    await engine.close()


async def test_a_failed_trial_search_reopens_the_circuit() -> None:
    scorer, clock = Overlap(), Clock()
    engine, m = await serving(scorer, clock, failures=1, open_s=10)
    scorer.fail_on = {"boom"}
    with pytest.raises(RuntimeError):
        await engine.score(m, "boom", ["d"], 5)
    clock.advance(10)
    with pytest.raises(RuntimeError):
        await engine.score(m, "boom", ["trial"], 5)
    assert engine.states() == {m: "circuit-open"}
    assert metric("rerank_model_circuit_opened_total", model=m) == 2
    assert metric("rerank_model_circuit_state", model=m) == 2
    with pytest.raises(CircuitOpen, match="next trial in 10s"):
        await engine.score(m, "fine", ["fine"], 5)
    await engine.close()


async def test_a_disabled_circuit_never_refuses() -> None:
    scorer, clock = Overlap(), Clock()
    engine, m = await serving(scorer, clock, enabled=False, failures=1)
    scorer.fail_on = {"boom"}
    for _ in range(3):
        with pytest.raises(RuntimeError):
            await engine.score(m, "boom", ["d"], 5)
    assert engine.states() == {m: "ready"}
    assert await engine.score(m, "fine", ["fine"], 5) == [1.0]
    await engine.close()


async def test_searches_failed_by_unloading_the_model_do_not_count() -> None:
    scorer, clock = Overlap(), Clock()
    engine, m = await serving(scorer, clock, failures=1)
    worker = engine._workers[m]
    scorer.hold()
    waiting = asyncio.create_task(engine.score(m, "q", ["q"], 10))
    await scorer.busy()
    await engine.close()
    scorer.release()
    with pytest.raises(ModelUnavailable):
        await waiting
    assert worker.breaker.state == "closed"
