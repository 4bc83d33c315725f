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
3. Flatten to (query, document) pairs, one per distinct pair, each with its rank: its document's position in its
   search (the cluster's order; a pair several searches want takes its best). Cut micro-batches so the padded size
   (longest pair x pairs) stays within `max_batch_tokens` and the count within `batch_size`, each one going to the
   model shortest first, off one of two orders, chosen before each micro-batch:
   - shortest first (across the round's searches), the fastest: little of a call is padding. Taken while the
     round has time to spare: TIME_TO_SPARE times what its remaining pairs should take at the model's pace
     (`batching.Pace`: seconds per padded token, as its calls took them; the warm-up call's time seeds it slow, so
     a new model starts rank first) is left before the earliest deadline among its searches;
   - rank first otherwise (rank 0 of every search of the round, earliest deadline first, then rank 1, ...), so
     what a deadline leaves scored is the top of each window, a whole number of micro-batches (the pairs scored
     shortest first before the switch only fill it in sooner), which is what the proxy reorders
     (rerank/ranking.py), never a search's shortest documents. Near the deadline its calls shrink to what the
     pace fits before it, so the last ones still land. Its price is the padding of mixed lengths: about nothing
     where documents fill the model's `max_length` (SciFact, Medline), 1.8-2x the CPU time for short ones (Vaswani,
     XQuAD-R: 1.5-1.7x the padded tokens).
4. Run the micro-batches one by one; after each, resolve the jobs whose pairs are all scored. Before each, pairs
   whose searches have all passed their deadline (or whose callers left) are skipped, never scored.

A caller waits until its deadline at most: with some pairs scored by then it gets those scores and None for the
rest (the proxy answers `partial`; when time ran short the scored ones are the top of its window, from the
cluster's first hit down, besides any score-cache hits), with none it gets TimeoutError. Scores are kept in an LRU
per loaded model, keyed by (instruction, query, document hash), so paging through one query's window never reaches
the model twice.
A full queue refuses at once (`Overloaded`) so the proxy falls back to the cluster's order instead of piling up.

Per-model knobs live in the model's spec (`max_wait_ms`, `max_batch_tokens`, `score_cache_entries`, `max_queue`);
with `max_batch_tokens` unset, a local backend's device decides it (`ModelSpec.batch_tokens`).

Loading runs as a background task per model. `start()` waits for every model's first attempt, `start(wait=False)`
returns at once; meanwhile a search gets `ModelLoading`. A model whose load or warm-up fails is tried again, after
`load_retry_s`, doubled for each next attempt up to `load_retry_max_s` (a little jitter), for as long as the engine
lives: a model fixed on disk (or a remote service that comes back) is picked up without a restart.

Each model has a circuit breaker (rerank/circuit.py, `ModelSpec.circuit`): a run of failed searches (the model
raised, or the deadline passed with the search not wholly scored) opens it, and searches then get `CircuitOpen` at
once, until a single trial search after `open_s` succeeds. A search refused as `Overloaded` says nothing about the
model and does not count; a search served wholly from the score cache never reaches the model nor the breaker.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from . import metrics
from .backend import Encoding, PairEncoder, Scorer, text_key
from .batching import Pace, fits, padded_tokens, token_batches
from .circuit import CircuitBreaker, Ticket
from .lru import LRU
from .registry import load_scorer
from .spec import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE = 256  # searches queued or being scored, per model
ROUND_BATCHES = 4  # a round takes about this many micro-batches of work: enough to sort lengths, short enough
# that a search arriving meanwhile soon gets its turn (deadline order is decided per round)
TIME_TO_SPARE = 1.5  # a round goes shortest first while this many times its expected time is left before the
# earliest deadline among its searches; rank first otherwise
WARM_UP_TOKENS = 4  # what the warm-up pair is taken to cost: its time, all fixed overhead, makes the first
# estimate of the model's pace slow, so the first searches go rank first until real calls are timed
PAIR_SPECIAL_TOKENS = 3  # [CLS] query [SEP] document [SEP]: the estimate only needs to be close
TOKEN_COUNT_ENTRIES = 100_000  # texts whose token count is remembered
COUNT_CHUNK = 256  # texts per encode_pairs / count_tokens call (whole searches, at least one): in a burst of
# searches the first ones reach the model while the next are tokenized
LOAD_RETRY_JITTER = 0.1  # a retry waits up to this fraction less than its backoff, so proxies started together spread


class ModelUnavailable(RuntimeError):
    """The model cannot take searches (unknown, not loaded, unloaded); the caller falls back to the cluster's order."""


class ModelLoading(ModelUnavailable):
    """The model has not loaded yet: its first load is under way, or it failed and waits for its next attempt (the
    message says the error)."""


class CircuitOpen(ModelUnavailable):
    """The model's circuit breaker is open (or half-open with its trial search in flight): searches fall back at
    once instead of reaching a model that keeps failing."""


_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*:)?//[^/?#\s]*@")
_AUTH_HEADER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_KEY_VALUE = re.compile(
    r"(?i)\b(api[_-]?key|access[_-]?token|token|password|passwd|secret)([\"']?\s*[=:]\s*[\"']?)[^\s\"'&,;]+"
)


def redact(text: str) -> str:
    """`text` (an error message) without the secrets it might carry: a URL's `user:password@`, an Authorization
    header's credentials, `api_key=...`-style values. For what goes into logs and health states."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group(1) or ''}//***@", text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)} ***", text)
    return _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


def load_retry_wait(first_s: float, max_s: float, failures: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the `failures`-th failed load attempt in a row (1, 2, ...): `first_s`, doubled for each
    earlier failure, at most `max_s`; then up to LOAD_RETRY_JITTER of it shorter, at random."""
    backoff = min(first_s * 2.0 ** min(max(failures - 1, 0), 64), max_s)
    return backoff * (1 - LOAD_RETRY_JITTER * rand())


def _describe(err: BaseException) -> str:
    return redact(f"{type(err).__name__}: {err}")


def _timed_warm_up(scorer: Scorer) -> float:
    """One tiny call, on the model thread, before the model takes searches: the seconds it took."""
    started = time.perf_counter()
    score_pairs(scorer, ["warm up"], ["warm up"])
    return time.perf_counter() - started


def _close_quietly(scorer: object) -> None:
    """Release a loaded backend nobody will use (e.g. the remote backend's connections)."""
    closer = getattr(scorer, "close", None)
    if callable(closer):
        try:
            closer()
        except Exception as err:  # noqa: BLE001  # nothing to do about it but say so
            log.warning("closing a discarded backend failed: %s", _describe(err))


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
    order: tuple[int, float, int]  # (rank, deadline, seq) of its most urgent target: the rank-first order
    taken: bool = False  # batched or dropped: the round's other order skips it


def _rank_first(pair: _Pair) -> tuple[int, float, int]:
    """A pair's place in a round's rank-first order: its document's rank in its search (the cluster's order), then
    the search's deadline and arrival."""
    return pair.order


def _shortest_first(pair: _Pair) -> int:
    return pair.tokens


@dataclass(eq=False)
class _Round:
    """The pairs of one round in both orders it may take them in; a pair taken off one is passed over in the other."""

    jobs: list[_Job]
    by_length: deque[_Pair]
    by_rank: deque[_Pair]
    left: int  # real tokens of the pairs not taken yet
    padding: float  # padded tokens per real token when the round goes shortest first

    @classmethod
    def of(cls, jobs: list[_Job], pairs: Sequence[_Pair], batch_size: int, max_batch_tokens: int) -> _Round:
        by_length = sorted(pairs, key=_shortest_first)
        lengths = [pair.tokens for pair in by_length]
        real = sum(lengths)
        padded = padded_tokens(lengths, token_batches(lengths, batch_size, max_batch_tokens))
        return cls(jobs, deque(by_length), deque(sorted(pairs, key=_rank_first)), real, padded / real if real else 1.0)


class _ModelWorker:
    def __init__(self, name: str, spec: ModelSpec, max_queue: int, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.spec = spec
        self.settings = BatchSettings.of(spec, max_queue)
        self.instruction: str | None = getattr(spec, "instruction", None)
        self.scorer: Scorer | None = None
        self.encoder: PairEncoder | None = None  # the scorer, when it tokenizes ahead (the local backends)
        self.error: str | None = None  # the last failed load attempt's, redacted; None once loaded
        self.failed_loads = 0
        self.breaker = CircuitBreaker(
            spec.circuit.failures, spec.circuit.open_s, enabled=spec.circuit.enabled, clock=clock,
            on_open=self._circuit_opened,
        )
        self._retry_at: float | None = None  # time.monotonic() of the next load attempt, while waiting for it
        self._attempted = asyncio.Event()  # the first load attempt is over (or the worker closed)
        self._load_task: asyncio.Task[None] | None = None
        self._closed = False
        self._inbox: list[_Job] = []  # sent by callers, tokens not counted yet
        self._pending: list[_Job] = []  # counted, waiting for a round
        self._jobs: set[_Job] = set()  # every job whose caller still waits: what max_queue bounds
        self._sent = asyncio.Event()  # the inbox got a job: the counter's wake-up
        self._admitted = asyncio.Event()  # the pending pool got jobs: the worker's wake-up
        self._seq = itertools.count()
        self._scores: LRU[tuple[str | None, str, bytes], float] = LRU(self.settings.score_cache_entries)
        self.pace = Pace()  # the model's seconds per padded token: whether a round has time to go shortest first
        self._token_counts: LRU[bytes, int] = LRU(TOKEN_COUNT_ENTRIES)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"model-{name}")
        self._tokens_thread = ThreadPoolExecutor(1, thread_name_prefix=f"tokens-{name}")
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def loaded(self) -> bool:
        return self.scorer is not None and not self._closed

    @property
    def ready(self) -> bool:
        """Loaded and taking searches: its circuit closed, or half-open (a trial search may go)."""
        return self.loaded and self.breaker.state != "open"

    @property
    def state(self) -> str:
        """ready | loading | error: <Type>: <message> (retrying in <N>s) | circuit-open | half-open | closed."""
        if self._closed:
            return "closed"
        if self.scorer is None:
            return f"error: {self.error} (retrying in {self._retry_in()}s)" if self.error else "loading"
        circuit = self.breaker.state
        return "ready" if circuit == "closed" else ("circuit-open" if circuit == "open" else "half-open")

    def _retry_in(self) -> int:
        """Whole seconds (rounded up) until the next load attempt; 0 while one is under way."""
        if self._retry_at is None:
            return 0
        return math.ceil(max(0.0, self._retry_at - time.monotonic()))

    # ---- loading ----------------------------------------------------------------------------------------------
    def launch(self, loader: Callable[[str, ModelSpec], Scorer]) -> None:
        """Start loading in the background: attempts until one succeeds, or the worker closes."""
        if self._load_task is None and not self._closed:
            self._load_task = asyncio.create_task(self._load_until_loaded(loader), name=f"load-{self.name}")

    async def first_attempt(self) -> None:
        """Until the first load attempt is over (loaded or failed), or the worker closed."""
        await self._attempted.wait()

    async def _load_until_loaded(self, loader: Callable[[str, ModelSpec], Scorer]) -> None:
        while True:
            self._retry_at = None
            error = await self._attempt(loader)
            if error is None:
                self._attempted.set()
                return
            self.error = error
            self.failed_loads += 1
            wait = load_retry_wait(self.spec.load_retry_s, self.spec.load_retry_max_s, self.failed_loads)
            self._retry_at = time.monotonic() + wait
            # The proxy keeps serving meanwhile: searches fall back, health says why. One line per attempt.
            log.error("model %s failed to load (attempt %d): %s; retrying in %.3gs",
                      self.name, self.failed_loads, error, wait)
            metrics.MODEL_LOAD_FAILURES.labels(self.name).inc()
            metrics.MODEL_UP.labels(self.name).set(0)
            self._attempted.set()
            await asyncio.sleep(wait)

    async def _attempt(self, loader: Callable[[str, ModelSpec], Scorer]) -> str | None:
        """One load and warm-up on the model thread; the error (redacted) if either failed, None once serving."""
        loading = self._thread.submit(loader, self.name, self.spec)
        try:
            scorer = await asyncio.wrap_future(loading)
        except asyncio.CancelledError:  # closed meanwhile: whatever still loads is released once it has
            loading.add_done_callback(
                lambda done: done.cancelled() or done.exception() is not None or _close_quietly(done.result())
            )
            raise
        except Exception as err:  # noqa: BLE001  # any loader error is a failed attempt, retried
            return _describe(err)
        try:
            seconds = await asyncio.wrap_future(self._thread.submit(_timed_warm_up, scorer))
            self.pace.observe(WARM_UP_TOKENS, seconds)
        except BaseException as err:
            self._discard(scorer)
            if not isinstance(err, Exception):
                raise
            return _describe(err)
        # A local backend knows its device, and so the call size its model runs best at (ModelSpec.batch_tokens and
        # batch_pairs).
        reported = {key: size for key in ("max_batch_tokens", "batch_size")
                    if isinstance(size := getattr(scorer, key, None), int)}
        self.settings = replace(self.settings, **reported)
        self.scorer = scorer
        self.encoder = scorer if isinstance(scorer, PairEncoder) else None
        self.error = None
        breaker = self.breaker
        metrics.MODEL_UP.labels(self.name).set(1)
        metrics.CIRCUIT_STATE.labels(self.name).set_function(lambda: breaker.code)
        self._tasks = [asyncio.create_task(self._run(), name=f"engine-{self.name}"),
                       asyncio.create_task(self._count_loop(), name=f"engine-{self.name}-counter")]
        if self.failed_loads:
            log.info("model %s loaded after %d failed attempts", self.name, self.failed_loads)
        else:
            log.info("model %s loaded", self.name)
        return None

    def _discard(self, scorer: object) -> None:
        try:
            self._thread.submit(_close_quietly, scorer)  # after any call of it still running
        except RuntimeError:  # the thread is shut down already
            _close_quietly(scorer)

    # ---- the circuit breaker ----------------------------------------------------------------------------------
    def _circuit_opened(self) -> None:
        metrics.CIRCUIT_OPENED.labels(self.name).inc()
        log.warning("model %s: circuit open after failed searches; they fall back for %gs, then one trial search",
                    self.name, self.breaker.open_s)

    def _circuit_refusal(self) -> CircuitOpen:
        if self.breaker.state == "open":
            return CircuitOpen(f"model {self.name}: circuit open after failed searches, next trial in "
                               f"{math.ceil(self.breaker.retry_in())}s")
        return CircuitOpen(f"model {self.name}: circuit half-open, its trial search is in flight")

    def _record(self, ticket: Ticket, ok: bool | None) -> None:
        before = self.breaker.state
        self.breaker.record(ticket, ok)
        if before != "closed" and self.breaker.state == "closed":
            log.info("model %s: circuit closed, the trial search succeeded", self.name)

    # ---- the caller's side ----------------------------------------------------------------------------------
    async def score(self, query: str, docs: Sequence[str], timeout_s: float) -> list[float | None]:
        if self._closed:
            raise ModelUnavailable(f"model {self.name} was unloaded")
        if self.scorer is None:
            if self.error is None:
                raise ModelLoading(f"model {self.name} is loading")
            raise ModelLoading(f"model {self.name} failed to load ({self.error}); retrying in {self._retry_in()}s")
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
        ticket = self.breaker.allow()
        if ticket is None:
            metrics.REJECTED.labels(self.name, "circuit-open").inc()
            raise self._circuit_refusal()
        ok: bool | None = None  # what the search says about the model: None = nothing (refused, left, unloaded)
        try:
            result = await self._queue(query, scores, todo, timeout_s)
            ok = all(score is not None for score in result)  # partial: the deadline passed first
            return result
        except (Overloaded, ModelUnavailable):
            raise
        except Exception:  # the model (or its tokenizer) raised, or nothing was scored by the deadline
            ok = False
            raise
        finally:
            self._record(ticket, ok)

    async def _queue(
        self, query: str, scores: list[float | None], todo: list[tuple[int, str, bytes]], timeout_s: float
    ) -> list[float | None]:
        if len(self._jobs) >= self.settings.max_queue:
            metrics.REJECTED.labels(self.name, "queue-full").inc()
            raise Overloaded(f"model {self.name} queue is full ({self.settings.max_queue} searches)")
        loop = asyncio.get_running_loop()
        now = loop.time()
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
                log.warning("model %s: counting tokens failed: %s", self.name, _describe(err))
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
                order = (i, job.deadline, job.seq)  # i: the document's rank in its search
                if (pair := pairs.get(key)) is None:
                    pairs[key] = pair = _Pair(job.query, doc, key, tokens, encoding, [], order)
                else:  # the same pair in another search: it goes as early as its most urgent one needs
                    pair.order = min(pair.order, order)
                pair.targets.append((job, i))
        work = _Round.of(jobs, list(pairs.values()), self.settings.batch_size, self.settings.max_batch_tokens)
        while batch := self._next_batch(work):
            await self._run_batch(batch)

    def _next_order(self, work: _Round) -> tuple[deque[_Pair], int]:
        """Which of the round's orders its next micro-batch comes off, and that call's padded-token budget.

        Shortest first, in calls of `max_batch_tokens`, while the round has time to spare: what it has left, at
        the model's pace, takes under 1/TIME_TO_SPARE of the time before the earliest deadline among its searches
        still waiting. Shortest first is the faster order, but a deadline may cut it anywhere. Otherwise rank first,
        which leaves the top of each window scored, in a call no bigger than what the pace fits before that deadline
        (one pair at least): the last calls before it shrink, so a search gets a few more of its top hits scored
        rather than a call the deadline cuts off."""
        budget = self.settings.max_batch_tokens
        per_token = self.pace.seconds_per_token
        if per_token is None:
            return work.by_rank, budget
        deadlines = [job.deadline for job in work.jobs if not job.future.done()]
        if not deadlines:
            return work.by_length, budget
        left = min(deadlines) - asyncio.get_running_loop().time()
        if TIME_TO_SPARE * per_token * work.left * work.padding <= left:
            return work.by_length, budget
        fit = int(left / per_token) if per_token > 0 else budget  # padded tokens the pace fits before the deadline
        return work.by_rank, max(1, min(budget, fit))

    def _next_batch(self, work: _Round) -> list[_Pair]:
        """The round's next micro-batch (`_next_order`), shortest first inside. Pairs taken off the other order are
        passed over, pairs nobody waits for any more dropped."""
        queue, budget = self._next_order(work)
        now = asyncio.get_running_loop().time()
        batch: list[_Pair] = []
        longest = 0
        while queue:
            pair = queue[0]
            if pair.taken:
                queue.popleft()
                continue
            reasons = [job.dead(now) for job, _ in pair.targets]
            if all(reasons):
                queue.popleft()
                pair.taken = True
                work.left -= pair.tokens
                metrics.DROPPED.labels(self.name, reasons[0] or "deadline").inc()
                continue
            longest = max(longest, pair.tokens)  # the batch's longest if this pair joins
            if not fits(len(batch), longest, self.settings.batch_size, budget):
                break
            batch.append(queue.popleft())
            pair.taken = True
            work.left -= pair.tokens
        batch.sort(key=_shortest_first)  # stable: equal lengths keep their order
        return batch

    async def _run_batch(self, batch: list[_Pair]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            scores = await loop.run_in_executor(self._thread, self._score_batch, batch)
        except Exception as err:  # fails the searches in this batch only; they fall back to the cluster's order
            metrics.MODEL_ERRORS.labels(self.name).inc()
            log.warning("model %s: a batch of %d pairs failed: %s", self.name, len(batch), _describe(err))
            for pair in batch:
                for job, _ in pair.targets:
                    if not job.future.done():
                        job.future.set_exception(err)
            return
        seconds = time.perf_counter() - started
        real = sum(pair.tokens for pair in batch)
        padded = len(batch) * max(pair.tokens for pair in batch)
        self.pace.observe(padded, seconds)
        metrics.BATCH_SECONDS.labels(self.name).observe(seconds)
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
        self._attempted.set()  # nobody waits for a first attempt that will not come
        tasks = [*self._tasks, *([self._load_task] if self._load_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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
        clock: Callable[[], float] = time.monotonic,
    ):
        """`max_queue`: searches queued or being scored per model, unless the model's spec sets its own. `clock`:
        what the circuit breakers time their open state by (tests step it by hand)."""
        self._loader = loader
        self._max_queue = max_queue
        self._clock = clock
        self._workers = {name: self._worker(name, spec) for name, spec in models.items()}

    def _worker(self, name: str, spec: ModelSpec) -> _ModelWorker:
        return _ModelWorker(name, spec, self._max_queue, self._clock)

    async def start(self, wait: bool = True) -> None:
        """Start loading every model in the background. `wait`: return once each has finished its first attempt
        (loaded, or failed and retrying); without it, at once, while searches get `ModelLoading` meanwhile."""
        for worker in self._workers.values():
            worker.launch(self._loader)
        if wait:
            await asyncio.gather(*(w.first_attempt() for w in self._workers.values()))

    def states(self) -> dict[str, str]:
        """Per model: ready, loading, `error: <Type>: <message> (retrying in <N>s)`, circuit-open, half-open or
        closed."""
        return {name: w.state for name, w in self._workers.items()}

    @property
    def ready(self) -> bool:
        """Every model loaded and taking searches (its circuit closed or half-open)."""
        return all(w.ready for w in self._workers.values())

    @property
    def loaded(self) -> bool:
        """Every model loaded, whatever its circuit."""
        return all(w.loaded for w in self._workers.values())

    async def score(self, model: str, query: str, docs: Sequence[str], timeout_s: float) -> list[float | None]:
        """One score per document, in order. At the deadline, the scores so far and None for the rest; with none
        scored, TimeoutError. At once when the model cannot take the search: ModelLoading (not loaded yet),
        CircuitOpen (its breaker is open), Overloaded (its queue is full), ModelUnavailable (unknown or unloaded)."""
        worker = self._workers.get(model)
        if worker is None:
            raise ModelUnavailable(f"no model named {model}")
        if not docs:
            return []
        return await worker.score(query, docs, timeout_s)

    async def reconfigured(self, models: Mapping[str, ModelSpec]) -> ScoringEngine:
        """A new engine for a reloaded config: unchanged loaded models keep their worker (queue, score cache and
        circuit included), new, changed or not yet loaded ones get a fresh worker, whose first load attempt is
        awaited here (one that fails goes on retrying in the background)."""
        new = ScoringEngine({}, loader=self._loader, max_queue=self._max_queue, clock=self._clock)
        fresh = []
        for name, spec in models.items():
            old = self._workers.get(name)
            if old is not None and old.spec == spec and old.loaded:
                new._workers[name] = old
            else:
                new._workers[name] = worker = new._worker(name, spec)
                fresh.append(worker)
        for worker in fresh:
            worker.launch(self._loader)
        await asyncio.gather(*(w.first_attempt() for w in fresh))
        return new

    async def close_unused(self, successor: ScoringEngine) -> None:
        """Close this engine's workers the successor did not keep (stopping their load retries)."""
        kept = {id(w) for w in successor._workers.values()}
        await asyncio.gather(*(w.close() for w in self._workers.values() if id(w) not in kept))

    async def close(self) -> None:
        """Close every model: load attempts and retries stop, waiting searches get ModelUnavailable."""
        await asyncio.gather(*(w.close() for w in self._workers.values()))
