"""The scoring engine: one queue and one worker task per model, shared by every search (the shape of
text-embeddings-inference's queue).

Callers send a job (query, documents, absolute deadline) and await it. Two tasks serve a model's queue:

- The counter admits sent jobs: on a tokenizer thread of its own it tokenizes their pairs once, as the model will
  read them (`PairEncoder.encode_pairs`, the local backends), so micro-batches are cut by exact lengths and the
  model thread only pads and runs; a backend that does not tokenize (remote) gets its texts counted with
  `count_tokens` (cached by text hash) instead. The jobs sent meanwhile go in one call of up to `COUNT_CHUNK`
  texts, so the searches that arrive while the model scores are tokenized meanwhile, not between its calls
  (TEI's router tokenizes before its queue for the same reason).
- The worker owns the admitted jobs and the model, which runs off the event loop in the worker's own thread. It
  repeats one round:

1. Gather: wait for the first admitted job, then for more, for at most `max_wait_ms` or until the queued pairs fill
   one micro-batch (`max_batch_tokens`); jobs admitted while the model was busy have waited already and go at once.
2. Take jobs earliest deadline first (with equal timeouts that is arrival order) up to `ROUND_BATCHES`
   micro-batches' worth of tokens, at least one job; the rest wait for the next round.
3. Flatten to (query, document) pairs, one per distinct pair, sorted by length, and cut micro-batches so the padded
   size (longest pair x pairs) stays within `max_batch_tokens` and the count within `batch_size`.
4. Run the micro-batches one by one; after each, resolve the jobs whose pairs are all scored. Before each, pairs
   whose searches have all passed their deadline (or whose callers left) are skipped, never scored.

A caller waits until its deadline at most: with some pairs scored by then it gets those scores and None for the
rest (the proxy answers `partial`), with none it gets TimeoutError. Scores are kept in an LRU per loaded model,
keyed by (instruction, query, document hash), so paging through one query's window never reaches the model twice.
A full queue refuses at once (`Overloaded`) so the proxy falls back to the cluster's order instead of piling up.

Per-model knobs live in the model's spec (`max_wait_ms`, `max_batch_tokens`, `score_cache_entries`, `max_queue`);
with `max_batch_tokens` unset, a local backend's device decides it (`ModelSpec.batch_tokens`).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from . import metrics
from .backend import Encoding, PairEncoder, Scorer, text_key
from .batching import fits
from .lru import LRU
from .registry import load_scorer
from .spec import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE = 256  # searches queued or being scored, per model
ROUND_BATCHES = 4  # a round takes about this many micro-batches of work: enough to sort lengths, short enough
# that a search arriving meanwhile soon gets its turn (deadline order is decided per round)
PAIR_SPECIAL_TOKENS = 3  # [CLS] query [SEP] document [SEP]: the estimate only needs to be close
TOKEN_COUNT_ENTRIES = 100_000  # texts whose token count is remembered
COUNT_CHUNK = 256  # texts per encode_pairs / count_tokens call (whole searches, at least one): in a burst of
# searches the first ones reach the model while the next are tokenized


class ModelUnavailable(RuntimeError):
    """The model is loading, failed to load or was unloaded; the caller falls back to the cluster's order."""


class Overloaded(RuntimeError):
    """The model's queue is full; the caller falls back at once instead of piling up."""


@dataclass(frozen=True)
class BatchSettings:
    max_wait_s: float
    max_batch_tokens: int
    batch_size: int
    score_cache_entries: int
    max_queue: int

    @classmethod
    def of(cls, spec: ModelSpec, max_queue: int = DEFAULT_MAX_QUEUE) -> BatchSettings:
        return cls(
            max_wait_s=spec.max_wait_ms / 1000,
            # Replaced by the sizes a local backend reports once loaded (by its device); a remote one reports none.
            max_batch_tokens=spec.batch_tokens(None),
            batch_size=spec.batch_pairs(None),
            score_cache_entries=spec.score_cache_entries,
            max_queue=spec.max_queue or max_queue,
        )


def score_pairs(scorer: Scorer, queries: Sequence[str], docs: Sequence[str]) -> list[float]:
    """Scores of (queries[i], docs[i]) through the backend's `score_pairs`, or, for a backend that only has
    `score(query, docs)`, one `score` call per distinct query with the scores put back in pair order."""
    direct = getattr(scorer, "score_pairs", None)
    if direct is not None:
        scores = list(direct(queries, docs))
    else:
        groups: dict[str, list[int]] = {}
        for i, query in enumerate(queries):
            groups.setdefault(query, []).append(i)
        scores = [0.0] * len(docs)
        for query, rows in groups.items():
            found = scorer.score(query, [docs[i] for i in rows])
            if len(found) != len(rows):
                raise RuntimeError(f"backend returned {len(found)} scores for {len(rows)} documents")
            for i, value in zip(rows, found):
                scores[i] = value
    if len(scores) != len(docs):
        raise RuntimeError(f"backend returned {len(scores)} scores for {len(docs)} pairs")
    return [float(value) for value in scores]


@dataclass(eq=False)
class _Job:
    """One search: its pairs that missed the score cache, and where their scores go."""

    query: str
    scores: list[float | None]  # filled in place: cache hits at once, model scores as micro-batches finish
    todo: list[tuple[int, str, bytes]]  # (position, document, document hash) of the pairs the model must score
    deadline: float  # event-loop clock
    future: asyncio.Future[None]  # done when every todo pair is scored or the model failed; cancelled = given up
    seq: int
    enqueued: float  # event-loop clock
    tokens: list[int] = field(default_factory=list)  # per todo pair, known once admitted
    encodings: Sequence[Encoding | None] = ()  # per todo pair, once admitted, when the backend is a PairEncoder
    left: int = 0  # todo pairs not scored yet

    def dead(self, now: float) -> str | None:
        """Why nobody needs this job's remaining pairs any more, or None while they are still wanted."""
        if self.future.cancelled():  # by the caller: at its deadline, or earlier when it was cancelled itself
            return "deadline" if now >= self.deadline else "abandoned"
        if self.future.done():
            return "error" if self.future.exception() is not None else "done"
        return "deadline" if now >= self.deadline else None


@dataclass(eq=False)
class _Pair:
    """One distinct (query, document) pair of a round; several jobs may want it."""

    query: str
    doc: str
    key: tuple[str | None, str, bytes]  # score cache key
    tokens: int
    encoding: Encoding | None  # what the model reads, for a PairEncoder backend
    targets: list[tuple[_Job, int]]


class _ModelWorker:
    def __init__(self, name: str, spec: ModelSpec, max_queue: int):
        self.name = name
        self.spec = spec
        self.settings = BatchSettings.of(spec, max_queue)
        self.instruction: str | None = getattr(spec, "instruction", None)
        self.scorer: Scorer | None = None
        self.encoder: PairEncoder | None = None  # the scorer, when it tokenizes ahead (the local backends)
        self.error: str | None = None
        self._closed = False
        self._inbox: list[_Job] = []  # sent by callers, tokens not counted yet
        self._pending: list[_Job] = []  # counted, waiting for a round
        self._jobs: set[_Job] = set()  # every job whose caller still waits: what max_queue bounds
        self._sent = asyncio.Event()  # the inbox got a job: the counter's wake-up
        self._admitted = asyncio.Event()  # the pending pool got jobs: the worker's wake-up
        self._seq = itertools.count()
        self._scores: LRU[tuple[str | None, str, bytes], float] = LRU(self.settings.score_cache_entries)
        self._token_counts: LRU[bytes, int] = LRU(TOKEN_COUNT_ENTRIES)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"model-{name}")
        self._tokens_thread = ThreadPoolExecutor(1, thread_name_prefix=f"tokens-{name}")
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def state(self) -> str:
        if self._closed:
            return "closed"
        return "ready" if self.scorer else (f"error: {self.error}" if self.error else "loading")

    async def start(self, loader: Callable[[str, ModelSpec], Scorer]) -> None:
        loop = asyncio.get_running_loop()
        try:
            scorer = await loop.run_in_executor(self._thread, loader, self.name, self.spec)
            await loop.run_in_executor(self._thread, score_pairs, scorer, ["warm up"], ["warm up"])
        except Exception as err:  # the proxy keeps serving: searches fall back, health says why
            self.error = f"{type(err).__name__}: {err}"
            log.error("model %s failed to load: %s", self.name, self.error)
            metrics.MODEL_UP.labels(self.name).set(0)
            return
        # A local backend knows its device, and so the call size its model runs best at (ModelSpec.batch_tokens and
        # batch_pairs).
        reported = {key: size for key in ("max_batch_tokens", "batch_size")
                    if isinstance(size := getattr(scorer, key, None), int)}
        self.settings = replace(self.settings, **reported)
        self.scorer = scorer
        self.encoder = scorer if isinstance(scorer, PairEncoder) else None
        metrics.MODEL_UP.labels(self.name).set(1)
        self._tasks = [asyncio.create_task(self._run(), name=f"engine-{self.name}"),
                       asyncio.create_task(self._count_loop(), name=f"engine-{self.name}-counter")]

    # ---- the caller's side ----------------------------------------------------------------------------------
    async def score(self, query: str, docs: Sequence[str], timeout_s: float) -> list[float | None]:
        if self.scorer is None or self._closed:
            raise ModelUnavailable(self.state)
        loop = asyncio.get_running_loop()
        now = loop.time()
        scores: list[float | None] = []
        todo: list[tuple[int, str, bytes]] = []
        for i, doc in enumerate(docs):
            key = text_key(doc)
            cached = self._scores.get((self.instruction, query, key))
            scores.append(cached)
            if cached is None:
                todo.append((i, doc, key))
        metrics.SCORE_CACHE.labels(self.name, "hit").inc(len(docs) - len(todo))
        metrics.SCORE_CACHE.labels(self.name, "miss").inc(len(todo))
        if not todo:
            return scores
        if len(self._jobs) >= self.settings.max_queue:
            metrics.REJECTED.labels(self.name, "queue-full").inc()
            raise Overloaded(f"model {self.name} queue is full ({self.settings.max_queue} searches)")
        job = _Job(query, scores, todo, now + timeout_s, loop.create_future(), next(self._seq), now)
        self._jobs.add(job)
        job.future.add_done_callback(lambda _: self._forget(job))
        metrics.QUEUE_DEPTH.labels(self.name).set(len(self._jobs))
        self._inbox.append(job)
        self._sent.set()
        try:
            await asyncio.wait([job.future], timeout=max(0.0, job.deadline - loop.time()))
        finally:
            if not job.future.done():  # deadline passed or the caller was cancelled: the worker skips the rest
                job.future.cancel()
        if not job.future.cancelled():
            job.future.result()  # the model's error, if it failed
        if all(score is None for score in scores):
            raise TimeoutError(f"model {self.name}: no pair scored within {timeout_s:.3f}s")
        return list(scores)

    def _forget(self, job: _Job) -> None:
        self._jobs.discard(job)
        metrics.QUEUE_DEPTH.labels(self.name).set(len(self._jobs))

    # ---- the worker's side ----------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            jobs: list[_Job] = []
            try:
                await self._gather()
                jobs = self._take_round()
                if jobs:
                    await self._score_round(jobs)
            except Exception as err:  # a bug here must not leave callers waiting for their deadline, round after round
                log.exception("model %s: scoring round failed", self.name)
                for job in [*jobs, *self._pending, *self._inbox]:
                    if not job.future.done():
                        job.future.set_exception(err)
                self._pending.clear()
                self._inbox.clear()

    async def _gather(self) -> None:
        """Wait for the first admitted job, then for more until a micro-batch's worth of tokens waits or `max_wait`
        passes. Jobs admitted while the model was busy (or left from the last round) are never held back."""
        if self._pending:
            return
        loop = asyncio.get_running_loop()
        while not self._pending:
            self._admitted.clear()
            await self._admitted.wait()
        window_ends = loop.time() + self.settings.max_wait_s
        while True:
            queued = sum(sum(job.tokens) for job in self._pending if not job.future.done())
            remaining = window_ends - loop.time()
            if queued >= self.settings.max_batch_tokens or remaining <= 0:
                return
            self._admitted.clear()
            try:
                await asyncio.wait_for(self._admitted.wait(), remaining)
            except TimeoutError:
                return

    # ---- the counter's side ---------------------------------------------------------------------------------
    async def _count_loop(self) -> None:
        while True:
            while not self._inbox:
                self._sent.clear()
                await self._sent.wait()
            taken = texts = 0
            for job in self._inbox:
                if taken and texts + len(job.todo) + 1 > COUNT_CHUNK:
                    break
                taken, texts = taken + 1, texts + len(job.todo) + 1
            sent, self._inbox = self._inbox[:taken], self._inbox[taken:]
            try:
                await self._admit(sent)
            except Exception as err:  # the backend could not count: these searches fall back, later ones still try
                metrics.MODEL_ERRORS.labels(self.name).inc()
                log.warning("model %s: counting tokens failed: %s: %s", self.name, type(err).__name__, err)
                for job in sent:
                    if not job.future.done():
                        job.future.set_exception(err)

    async def _admit(self, sent: list[_Job]) -> None:
        """Tokenize these jobs' pairs (or count their new texts) in one backend call, and pass the jobs to the
        worker."""
        now = asyncio.get_running_loop().time()
        jobs = []
        for job in sent:
            if (reason := job.dead(now)) is None:
                jobs.append(job)
            else:
                metrics.DROPPED.labels(self.name, reason).inc(len(job.todo))
        if not jobs:
            return
        if self.encoder is not None:
            await self._encode(self.encoder, jobs)
        else:
            await self._count(jobs)
        for job in jobs:
            job.left = len(job.todo)
            self._pending.append(job)
        self._admitted.set()

    async def _encode(self, encoder: PairEncoder, jobs: list[_Job]) -> None:
        queries = [job.query for job in jobs for _ in job.todo]
        docs = [doc for job in jobs for _, doc, _ in job.todo]
        loop = asyncio.get_running_loop()
        encodings = await loop.run_in_executor(self._tokens_thread, encoder.encode_pairs, queries, docs)
        if len(encodings) != len(docs):
            raise RuntimeError(f"backend encoded {len(encodings)} pairs of {len(docs)}")
        start = 0
        for job in jobs:
            job.encodings = encodings[start : start + len(job.todo)]
            job.tokens = [encoding.tokens for encoding in job.encodings]
            start += len(job.todo)

    async def _count(self, jobs: list[_Job]) -> None:
        """Pair sizes estimated from each text's token count, for a backend that does not tokenize ahead."""
        counts: dict[bytes, int] = {}
        missing: dict[bytes, str] = {}
        for job in jobs:
            for key, text in ((text_key(job.query), job.query), *((k, d) for _, d, k in job.todo)):
                known = self._token_counts.get(key)
                if known is not None:
                    counts[key] = known
                else:
                    missing[key] = text
        if missing:
            assert self.scorer is not None
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(self._tokens_thread, self.scorer.count_tokens, list(missing.values()))
            if len(found) != len(missing):
                raise RuntimeError(f"backend counted {len(found)} texts of {len(missing)}")
            for key, n in zip(missing, found):
                counts[key] = n
                self._token_counts.put(key, n)
        cap = getattr(self.scorer, "max_length", None)
        for job in jobs:
            query_tokens = counts[text_key(job.query)] + PAIR_SPECIAL_TOKENS
            job.tokens = [query_tokens + counts[k] for _, _, k in job.todo]
            if isinstance(cap, int):
                job.tokens = [min(n, cap) for n in job.tokens]
            job.encodings = [None] * len(job.todo)

    # ---- the worker's side, continued -------------------------------------------------------------------------
    def _take_round(self) -> list[_Job]:
        """The jobs of the next round: earliest deadline first, about ROUND_BATCHES micro-batches of tokens."""
        now = asyncio.get_running_loop().time()
        live: list[_Job] = []
        for job in self._pending:
            reason = job.dead(now)
            if reason is None:
                live.append(job)
            else:
                metrics.DROPPED.labels(self.name, reason).inc(job.left)
        live.sort(key=lambda job: (job.deadline, job.seq))
        budget = self.settings.max_batch_tokens * ROUND_BATCHES
        taken = tokens = 0
        for job in live:
            size = sum(job.tokens)
            if taken and tokens + size > budget:
                break
            taken, tokens = taken + 1, tokens + size
        self._pending = live[taken:]
        return live[:taken]

    async def _score_round(self, jobs: list[_Job]) -> None:
        now = asyncio.get_running_loop().time()
        for job in jobs:
            metrics.QUEUE_WAIT.labels(self.name).observe(now - job.enqueued)
        pairs: dict[tuple[str | None, str, bytes], _Pair] = {}
        for job in jobs:
            for (i, doc, doc_key), tokens, encoding in zip(job.todo, job.tokens, job.encodings):
                key = (self.instruction, job.query, doc_key)
                cached = self._scores.get(key)  # scored since the job was sent (the same page, asked twice)
                if cached is not None:
                    self._deliver(job, i, cached)
                    continue
                if (pair := pairs.get(key)) is None:
                    pairs[key] = pair = _Pair(job.query, doc, key, tokens, encoding, [])
                pair.targets.append((job, i))
        queue = deque(sorted(pairs.values(), key=lambda pair: pair.tokens))
        while batch := self._next_batch(queue):
            await self._run_batch(batch)

    def _next_batch(self, queue: deque[_Pair]) -> list[_Pair]:
        """The next micro-batch off the length-sorted queue; pairs nobody waits for any more are dropped."""
        now = asyncio.get_running_loop().time()
        batch: list[_Pair] = []
        while queue:
            pair = queue[0]
            reasons = [job.dead(now) for job, _ in pair.targets]
            if all(reasons):
                queue.popleft()
                metrics.DROPPED.labels(self.name, reasons[0] or "deadline").inc()
                continue
            # Sorted ascending, so this pair is the batch's longest if it joins.
            if not fits(len(batch), pair.tokens, self.settings.batch_size, self.settings.max_batch_tokens):
                break
            batch.append(queue.popleft())
        return batch

    async def _run_batch(self, batch: list[_Pair]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            scores = await loop.run_in_executor(self._thread, self._score_batch, batch)
        except Exception as err:  # fails the searches in this batch only; they fall back to the cluster's order
            metrics.MODEL_ERRORS.labels(self.name).inc()
            log.warning("model %s: a batch of %d pairs failed: %s: %s", self.name, len(batch), type(err).__name__, err)
            for pair in batch:
                for job, _ in pair.targets:
                    if not job.future.done():
                        job.future.set_exception(err)
            return
        real = sum(pair.tokens for pair in batch)
        padded = len(batch) * max(pair.tokens for pair in batch)
        metrics.BATCH_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        metrics.PAIRS.labels(self.name).inc(len(batch))
        metrics.BATCH_PAIRS.labels(self.name).observe(len(batch))
        metrics.BATCH_FILL.labels(self.name).observe(real / padded if padded else 1.0)
        metrics.BATCH_TOKENS.labels(self.name, "real").inc(real)
        metrics.BATCH_TOKENS.labels(self.name, "padding").inc(padded - real)
        for pair, value in zip(batch, scores):
            self._scores.put(pair.key, value)  # also when its searches gave up meanwhile: the next page needs it
            for job, i in pair.targets:
                self._deliver(job, i, value)

    def _score_batch(self, batch: list[_Pair]) -> list[float]:
        """On the model thread: the encodings when the backend made them, else the texts."""
        assert self.scorer is not None
        if self.encoder is not None:
            scores = self.encoder.score_encoded([pair.encoding for pair in batch])
            if len(scores) != len(batch):
                raise RuntimeError(f"backend returned {len(scores)} scores for {len(batch)} pairs")
            return [float(value) for value in scores]
        return score_pairs(self.scorer, [pair.query for pair in batch], [pair.doc for pair in batch])

    @staticmethod
    def _deliver(job: _Job, i: int, value: float) -> None:
        if job.future.done():
            return
        job.scores[i] = value
        job.left -= 1
        if job.left == 0:
            job.future.set_result(None)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        gone = ModelUnavailable(f"model {self.name} was unloaded")
        for job in list(self._jobs):
            if not job.future.done():
                job.future.set_exception(gone)
        closer = getattr(self.scorer, "close", None)
        if callable(closer):  # e.g. the remote backend's connections; runs after any model call still going
            self._thread.submit(closer)
        self._thread.shutdown(wait=False)
        self._tokens_thread.shutdown(wait=False)


class ScoringEngine:
    def __init__(
        self,
        models: Mapping[str, ModelSpec],
        *,
        loader: Callable[[str, ModelSpec], Scorer] = load_scorer,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ):
        """`max_queue`: searches queued or being scored per model, unless the model's spec sets its own."""
        self._loader = loader
        self._max_queue = max_queue
        self._workers = {name: _ModelWorker(name, spec, max_queue) for name, spec in models.items()}

    async def start(self) -> None:
        await asyncio.gather(*(w.start(self._loader) for w in self._workers.values()))

    def states(self) -> dict[str, str]:
        return {name: w.state for name, w in self._workers.items()}

    async def score(self, model: str, query: str, docs: Sequence[str], timeout_s: float) -> list[float | None]:
        """One score per document, in order. At the deadline, the scores so far and None for the rest; with none
        scored, TimeoutError. ModelUnavailable / Overloaded at once when the model cannot take the search."""
        worker = self._workers.get(model)
        if worker is None:
            raise ModelUnavailable(f"no model named {model}")
        if not docs:
            return []
        return await worker.score(query, docs, timeout_s)

    async def reconfigured(self, models: Mapping[str, ModelSpec]) -> ScoringEngine:
        """A new engine for a reloaded config: unchanged models keep their loaded worker (queue and score cache
        included), new or changed ones load now."""
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
