"""Loading models in the background: start(wait=False), ModelLoading meanwhile, retries with backoff until a load
succeeds, states and metrics while it does, reloads, closing, and no secrets in what health and logs say.

Loaders are plain functions run on the engine's model thread; a threading.Event holds one where a test needs a
slow load, and a loader that fails N times before it succeeds stands for a model fixed on disk while the proxy
runs. Retries wait load_retry_s = 0.01 s; tests await conditions (bounded), never a fixed sleep."""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable, Sequence

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from rerank import engine as engine_module
from rerank.engine import (
    LOAD_RETRY_JITTER,
    CircuitOpen,
    ModelLoading,
    ModelUnavailable,
    ScoringEngine,
    load_retry_wait,
    redact,
)
from rerank.spec import CrossEncoderSpec, ModelSpec, RemoteSpec

_names = itertools.count()
FAST_RETRY = {"load_retry_s": 0.01, "load_retry_max_s": 0.02}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def spec(**knobs: object) -> ModelSpec:
    return CrossEncoderSpec(source="test", **knobs)


def fresh_name() -> str:
    return f"l{next(_names)}"


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait (without blocking the loop) until `condition()` holds; fail after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


class Overlap:
    """Score = words shared by query and document; `closed` is set when the engine releases it."""

    name = "overlap"

    def __init__(self, warm_up_fails: bool = False) -> None:
        self.warm_up_fails = warm_up_fails
        self.closed = threading.Event()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(text.split()) for text in texts]

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> list[float]:
        if self.warm_up_fails:
            raise RuntimeError("CUDA out of memory")
        return [float(len(set(q.split()) & set(d.split()))) for q, d in zip(queries, docs)]

    def score(self, query: str, docs: Sequence[str]) -> list[float]:
        return self.score_pairs([query] * len(docs), docs)

    def close(self) -> None:
        self.closed.set()


class FlakyLoader:
    """Fails its first `failures` calls with `error`, then loads an Overlap. `gate`, when cleared, holds each call
    (after signalling `entered`) until set."""

    def __init__(self, failures: int = 0, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or OSError("model folder is missing config.json")
        self.attempts = 0
        self.loaded: list[Overlap] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, name: str, spec: ModelSpec) -> Overlap:
        self.attempts += 1
        self.entered.set()
        assert self.gate.wait(10), "test never released the loader"
        if self.attempts <= self.failures:
            raise self.error
        scorer = Overlap()
        self.loaded.append(scorer)
        return scorer


async def test_start_without_wait_returns_before_a_slow_load_and_searches_get_model_loading() -> None:
    loader = FlakyLoader()
    loader.gate.clear()
    m = fresh_name()
    engine = ScoringEngine({m: spec()}, loader=loader)
    await asyncio.wait_for(engine.start(wait=False), 1)
    assert await asyncio.to_thread(loader.entered.wait, 10), "loading never started"
    assert engine.states() == {m: "loading"}
    assert not engine.loaded and not engine.ready
    with pytest.raises(ModelLoading, match="is loading") as refused:
        await engine.score(m, "q", ["q"], 5)
    assert isinstance(refused.value, ModelUnavailable)
    loader.gate.set()
    await until(lambda: engine.loaded)
    assert engine.states() == {m: "ready"} and engine.ready
    assert await engine.score(m, "a b", ["a", "b c"], 5) == [1.0, 1.0]
    assert metric("rerank_model_up", model=m) == 1
    await engine.close()


async def test_start_with_wait_returns_once_every_model_tried_its_first_load() -> None:
    good, bad = fresh_name(), fresh_name()
    loaders = {good: FlakyLoader(), bad: FlakyLoader(failures=10**6)}
    engine = ScoringEngine({good: spec(), bad: spec(**FAST_RETRY)}, loader=lambda n, s: loaders[n](n, s))
    await engine.start()
    states = engine.states()
    assert states[good] == "ready"
    assert states[bad].startswith("error: OSError: model folder is missing config.json (retrying in ")
    assert not engine.loaded and not engine.ready
    assert await engine.score(good, "q", ["q"], 5) == [1.0]
    await engine.close()


async def test_a_failed_load_is_retried_until_it_succeeds_and_then_the_model_serves() -> None:
    loader = FlakyLoader(failures=3)
    m = fresh_name()
    engine = ScoringEngine({m: spec(**FAST_RETRY)}, loader=loader)
    await engine.start()
    assert engine.states()[m].startswith("error: ")
    with pytest.raises(ModelLoading, match="missing config.json"):
        await engine.score(m, "q", ["q"], 5)
    assert metric("rerank_model_up", model=m) == 0
    await until(lambda: engine.loaded)
    assert loader.attempts == 4
    assert engine.states() == {m: "ready"}
    assert await engine.score(m, "q", ["q", "r"], 5) == [1.0, 0.0]
    assert metric("rerank_model_load_failures_total", model=m) == 3
    assert metric("rerank_model_up", model=m) == 1
    await engine.close()


async def test_a_failed_load_is_retried_when_start_did_not_wait_either() -> None:
    loader = FlakyLoader(failures=2)
    m = fresh_name()
    engine = ScoringEngine({m: spec(**FAST_RETRY)}, loader=loader)
    await engine.start(wait=False)
    await until(lambda: engine.loaded)
    assert loader.attempts == 3 and engine.states() == {m: "ready"}
    await engine.close()


async def test_a_failing_warm_up_is_a_failed_attempt_and_its_scorer_is_released() -> None:
    made: list[Overlap] = []

    def loader(name: str, spec: ModelSpec) -> Overlap:
        made.append(Overlap(warm_up_fails=not made))  # the first one cannot run, the next can
        return made[-1]

    m = fresh_name()
    engine = ScoringEngine({m: spec(**FAST_RETRY)}, loader=loader)
    await engine.start()
    assert engine.states()[m].startswith("error: RuntimeError: CUDA out of memory (retrying in ")
    assert await asyncio.to_thread(made[0].closed.wait, 10), "the failed scorer was not released"
    await until(lambda: engine.loaded)
    assert len(made) == 2 and not made[1].closed.is_set()
    assert await engine.score(m, "q", ["q"], 5) == [1.0]
    await engine.close()


async def test_states_while_waiting_to_retry_name_the_error_and_the_seconds_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_module, "LOAD_RETRY_JITTER", 0.0)
    m = fresh_name()
    engine = ScoringEngine({m: spec(load_retry_s=30)}, loader=FlakyLoader(failures=1))
    await engine.start()
    assert engine.states() == {m: "error: OSError: model folder is missing config.json (retrying in 30s)"}
    with pytest.raises(ModelLoading, match=r"failed to load \(OSError: model folder is missing config.json\); "
                                           r"retrying in 30s"):
        await engine.score(m, "q", ["q"], 5)
    await engine.close()
    assert engine.states() == {m: "closed"}
    assert not engine.loaded and not engine.ready


def test_the_retry_wait_doubles_from_load_retry_s_up_to_load_retry_max_s() -> None:
    no_jitter = [load_retry_wait(1.0, 60.0, n, rand=lambda: 0.0) for n in range(1, 10)]
    assert no_jitter == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert load_retry_wait(1.0, 60.0, 10**6, rand=lambda: 0.0) == 60  # forever, no overflow
    # jitter only ever shortens a wait, by at most LOAD_RETRY_JITTER of it
    assert load_retry_wait(4.0, 60.0, 1, rand=lambda: 1.0) == pytest.approx(4 * (1 - LOAD_RETRY_JITTER))
    waits = {load_retry_wait(2.0, 60.0, 3) for _ in range(50)}
    assert all(8 * (1 - LOAD_RETRY_JITTER) <= wait <= 8 for wait in waits) and len(waits) > 1


def test_load_retry_settings_are_validated() -> None:
    assert (spec().load_retry_s, spec().load_retry_max_s) == (1.0, 60.0)
    for bad in ({"load_retry_s": 0}, {"load_retry_max_s": 0}, {"load_retry_s": 5, "load_retry_max_s": 1}):
        with pytest.raises(ValidationError, match="load_retry"):
            spec(**bad)
    # not remote-only: a remote backend takes them too
    assert RemoteSpec(source="http://r:7997", load_retry_s=0.5).load_retry_s == 0.5


async def test_close_stops_the_retries() -> None:
    loader = FlakyLoader(failures=10**6)
    m = fresh_name()
    engine = ScoringEngine({m: spec(**FAST_RETRY)}, loader=loader)
    await engine.start()
    await until(lambda: loader.attempts >= 3)
    task = engine._workers[m]._load_task
    assert task is not None and not task.done()
    await engine.close()
    assert task.cancelled()
    with pytest.raises(ModelUnavailable, match="unloaded") as refused:
        await engine.score(m, "q", ["q"], 5)
    assert type(refused.value) is ModelUnavailable


async def test_closing_during_a_slow_first_load_releases_the_scorer_once_it_loads() -> None:
    loader = FlakyLoader()
    loader.gate.clear()
    m = fresh_name()
    engine = ScoringEngine({m: spec()}, loader=loader)
    await engine.start(wait=False)
    assert await asyncio.to_thread(loader.entered.wait, 10)
    await asyncio.wait_for(engine.close(), 5)  # does not wait for the load
    loader.gate.set()
    await until(lambda: bool(loader.loaded))
    assert await asyncio.to_thread(loader.loaded[0].closed.wait, 10), "the late scorer was never released"
    assert engine.states() == {m: "closed"}


async def test_a_start_that_waits_returns_when_the_engine_is_closed_meanwhile() -> None:
    loader = FlakyLoader()
    loader.gate.clear()
    m = fresh_name()
    engine = ScoringEngine({m: spec()}, loader=loader)
    starting = asyncio.create_task(engine.start())
    assert await asyncio.to_thread(loader.entered.wait, 10)
    await engine.close()
    await asyncio.wait_for(starting, 5)
    loader.gate.set()


async def test_a_reload_keeps_ready_models_and_retries_new_failing_ones_in_the_background() -> None:
    kept, added = fresh_name(), fresh_name()
    loaders = {kept: FlakyLoader(), added: FlakyLoader(failures=2)}

    def loader(name: str, spec: ModelSpec) -> Overlap:
        return loaders[name](name, spec)

    engine = ScoringEngine({kept: spec()}, loader=loader)
    await engine.start()
    reloaded = await engine.reconfigured({kept: spec(), added: spec(**FAST_RETRY)})
    assert reloaded._workers[kept] is engine._workers[kept] and loaders[kept].attempts == 1
    assert reloaded.states()[kept] == "ready"
    assert reloaded.states()[added].startswith("error: OSError")  # its first attempt was awaited
    await engine.close_unused(reloaded)
    await until(lambda: reloaded.loaded)
    assert loaders[added].attempts == 3
    assert await reloaded.score(added, "q", ["q"], 5) == [1.0]
    await reloaded.close()


async def test_a_reload_replaces_a_model_still_failing_and_close_unused_stops_the_old_retries() -> None:
    m = fresh_name()
    old_loader, new_loader = FlakyLoader(failures=10**6), FlakyLoader()
    loaders = [old_loader]
    engine = ScoringEngine({m: spec(**FAST_RETRY)}, loader=lambda n, s: loaders[-1](n, s))
    await engine.start()
    old_task = engine._workers[m]._load_task
    loaders.append(new_loader)  # the model was fixed: the reload loads it afresh
    reloaded = await engine.reconfigured({m: spec(**FAST_RETRY)})
    assert reloaded.states() == {m: "ready"}
    await engine.close_unused(reloaded)
    assert old_task is not None and old_task.cancelled()
    assert await reloaded.score(m, "q", ["q"], 5) == [1.0]
    await reloaded.close()


async def test_each_failed_attempt_logs_one_error_line_and_the_load_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loader = FlakyLoader(failures=2)
    m = fresh_name()
    engine = ScoringEngine({m: spec(**FAST_RETRY)}, loader=loader)
    with caplog.at_level(logging.INFO, logger="rerank.engine"):
        await engine.start()
        await until(lambda: engine.loaded)
    mine = [r for r in caplog.records if r.name == "rerank.engine" and f"model {m} " in r.getMessage()]
    errors = [r for r in mine if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all(r.exc_info is None for r in errors)  # the message, no traceback
    assert "failed to load (attempt 1): OSError: model folder is missing config.json; retrying in" in \
        errors[0].getMessage()
    infos = [r.getMessage() for r in mine if r.levelno == logging.INFO]
    assert infos == [f"model {m} loaded after 2 failed attempts"]
    await engine.close()


async def test_credentials_in_a_load_error_never_reach_states_logs_or_the_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = ConnectionError("POST https://admin:hunter2@rerank.internal:7997/v1/rerank failed "
                            "(Authorization: Bearer sk-live-123)")
    loader = FlakyLoader(failures=10**6, error=error)
    m = fresh_name()
    engine = ScoringEngine({m: spec(**FAST_RETRY)}, loader=loader)
    with caplog.at_level(logging.INFO, logger="rerank.engine"):
        await engine.start()
        await until(lambda: loader.attempts >= 2)
    with pytest.raises(ModelLoading) as refused:
        await engine.score(m, "q", ["q"], 5)
    state = engine.states()[m]
    logged = " ".join(r.getMessage() for r in caplog.records)
    for text in (state, logged, str(refused.value)):
        assert "hunter2" not in text and "sk-live-123" not in text and "admin:" not in text
    assert "https://***@rerank.internal:7997/v1/rerank" in state
    await engine.close()


@pytest.mark.parametrize(("text", "expected"), [
    ("GET http://user:pass@host:9200/x", "GET http://***@host:9200/x"),
    ("https://token@host/path?q=a@b", "https://***@host/path?q=a@b"),
    ("no secrets in http://host:7997/v1/rerank", "no secrets in http://host:7997/v1/rerank"),
    ("header Authorization: Bearer abc.def-123", "header Authorization: Bearer ***"),
    ("api_key=sk-123&x=1", "api_key=***&x=1"),
    ('{"password": "s3cret"}', '{"password": "***"}'),
    ("max tokens: 512", "max tokens: 512"),
])
def test_redact_hides_credentials_and_keeps_the_rest(text: str, expected: str) -> None:
    assert redact(text) == expected


async def test_a_model_that_loads_late_starts_with_its_circuit_closed() -> None:
    loader = FlakyLoader(failures=1)
    m = fresh_name()
    engine = ScoringEngine({m: spec(**FAST_RETRY, circuit={"failures": 1})}, loader=loader)
    await engine.start()
    with pytest.raises(ModelLoading):  # not loaded is not a failed search: no CircuitOpen afterwards
        await engine.score(m, "q", ["q"], 5)
    await until(lambda: engine.loaded)
    assert engine.ready and metric("rerank_model_circuit_state", model=m) == 0
    try:
        assert await engine.score(m, "q", ["q"], 5) == [1.0]
    except CircuitOpen:  # pragma: no cover - the assertion message is the point
        pytest.fail("a model that was loading opened its circuit")
    await engine.close()
