"""The scoring engine: one queue and one worker per model, shared by every request.

Callers send (query, documents) and await the scores; the worker owns the queue and runs the model off the event loop
in its own thread, one batch at a time, so concurrent searches never contend for the model. A job whose caller has
given up (deadline passed) is dropped before it reaches the model.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import metrics
from .backend import Scorer
from .registry import load_scorer
from .spec import ModelSpec

log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """The model is loading or failed to load; the caller falls back to the cluster's order."""


class Overloaded(RuntimeError):
    """The model's queue is full; the caller falls back at once instead of piling up."""


@dataclass
class _Job:
    query: str
    docs: Sequence[str]
    future: asyncio.Future[list[float]]
    enqueued: float = field(default_factory=time.perf_counter)


class _ModelWorker:
    def __init__(self, name: str, spec: ModelSpec, max_queue: int):
        self.name = name
        self.spec = spec
        self.scorer: Scorer | None = None
        self.error: str | None = None
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(max_queue)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"model-{name}")
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> str:
        return "ready" if self.scorer else (f"error: {self.error}" if self.error else "loading")

    async def start(self, loader: Callable[[str, ModelSpec], Scorer]) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.scorer = await loop.run_in_executor(self._thread, loader, self.name, self.spec)
            await loop.run_in_executor(self._thread, self.scorer.score, "warm up", ["warm up"])
        except Exception as err:  # the proxy keeps serving: searches fall back, health says why
            self.error = f"{type(err).__name__}: {err}"
            log.error("model %s failed to load: %s", self.name, self.error)
            metrics.MODEL_UP.labels(self.name).set(0)
            return
        metrics.MODEL_UP.labels(self.name).set(1)
        self._task = asyncio.create_task(self._run(), name=f"engine-{self.name}")

    def submit(self, query: str, docs: Sequence[str]) -> asyncio.Future[list[float]]:
        if self.scorer is None:
            raise ModelUnavailable(self.state)
        future: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(query, docs, future))
        except asyncio.QueueFull:
            metrics.REJECTED.labels(self.name, "queue-full").inc()
            raise Overloaded(f"model {self.name} queue is full ({self._queue.maxsize} searches)") from None
        return future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.scorer is not None
        while True:
            job = await self._queue.get()
            if job.future.done():  # the caller's deadline passed while it waited
                metrics.REJECTED.labels(self.name, "deadline").inc()
                continue
            metrics.QUEUE_WAIT.labels(self.name).observe(time.perf_counter() - job.enqueued)
            started = time.perf_counter()
            try:
                scores = await loop.run_in_executor(self._thread, self.scorer.score, job.query, job.docs)
            except Exception as err:
                metrics.MODEL_ERRORS.labels(self.name).inc()
                if not job.future.done():
                    job.future.set_exception(err)
                continue
            metrics.BATCH_SECONDS.labels(self.name).observe(time.perf_counter() - started)
            metrics.PAIRS.labels(self.name).inc(len(job.docs))
            if not job.future.done():
                job.future.set_result(scores)

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._thread.shutdown(wait=False, cancel_futures=True)


class ScoringEngine:
    def __init__(
        self,
        models: Mapping[str, ModelSpec],
        *,
        loader: Callable[[str, ModelSpec], Scorer] = load_scorer,
        max_queue: int = 256,
    ):
        self._loader = loader
        self._max_queue = max_queue
        self._workers = {name: _ModelWorker(name, spec, max_queue) for name, spec in models.items()}

    async def start(self) -> None:
        await asyncio.gather(*(w.start(self._loader) for w in self._workers.values()))

    def states(self) -> dict[str, str]:
        return {name: w.state for name, w in self._workers.items()}

    async def score(self, model: str, query: str, docs: Sequence[str], timeout_s: float) -> list[float]:
        worker = self._workers.get(model)
        if worker is None:
            raise ModelUnavailable(f"no model named {model}")
        if not docs:
            return []
        future = worker.submit(query, docs)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    async def reconfigured(self, models: Mapping[str, ModelSpec]) -> ScoringEngine:
        """A new engine for a reloaded config: unchanged models keep their loaded worker, new ones load now."""
        new = ScoringEngine({}, loader=self._loader, max_queue=self._max_queue)
        fresh = []
        for name, spec in models.items():
            old = self._workers.get(name)
            if old is not None and old.spec == spec and old.scorer is not None:
                new._workers[name] = old
            else:
                new._workers[name] = worker = _ModelWorker(name, spec, self._max_queue)
                fresh.append(worker)
        await asyncio.gather(*(w.start(self._loader) for w in fresh))
        return new

    async def close_unused(self, successor: ScoringEngine) -> None:
        kept = {id(w) for w in successor._workers.values()}
        await asyncio.gather(*(w.close() for w in self._workers.values() if id(w) not in kept))

    async def close(self) -> None:
        await asyncio.gather(*(w.close() for w in self._workers.values()))
