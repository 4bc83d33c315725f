"""The scoring engine: one queue per model, shared by every search, in the shape of text-embeddings-inference's:
callers send work to the task that owns the queue and await a future; nothing else touches the queue's state.

Per model (`_ModelWorker`):

- The door (`_ModelWorker.score`, on the caller's task) answers what it can at once: ModelLoading, CircuitOpen
  (rerank/circuit.py), the score cache (an LRU per loaded model, keyed by (instruction, query, document hash), so
  paging through one query's window never reaches the model twice; a search served wholly from it never reaches the
  queue nor the breaker), and admission: the searches in flight (sent, not answered) are bounded, and a full queue
  refuses the newcomer at once (`Overloaded`, `scheduling.admit`) so the proxy falls back to the cluster's order
  instead of piling up (the bound is a count the door keeps, as TEI's is a semaphore its requests hold). Then it
  sends `Append(job)`, waits for the job's future until the deadline at most, and, if it stops waiting before the
  future is done (deadline, or its caller cancelled), cancels the future and sends `Cancel(job, reason)`.
- The queue (`ModelQueue`) is one task fed by one mailbox. Callers send `Append`, `Cancel`; the loader sends
  `Reconfigure` (the loaded model, its batch sizes, its pace); closing sends `Shutdown`; `Snapshot` asks for a
  summary. Its own work comes back as messages too: a tokenizer call done (`_Tokenized`), a model call done
  (`_Scored`), the gathering window over (`_WindowOver`). It handles every message that has arrived, then acts:
  starts the next tokenizer call, and, when the model is idle, the next micro-batch. All its decisions are pure
  functions of rerank/scheduling.py, given "now".

A search's way through the queue:

1. Tokenize: on a tokenizer thread of the model's own, each arrived search's pairs are tokenized once, as the model
   will read them (`PairEncoder.encode_pairs`, the local backends), so micro-batches are cut by exact lengths and
   the model thread only pads and runs; a backend that does not tokenize (remote) gets its texts counted with
   `count_tokens` (cached by text hash) instead. The searches arrived meanwhile go in one call of up to
   `COUNT_CHUNK` texts (whole searches), so the searches that arrive while the model scores are tokenized
   meanwhile, not between its calls (TEI's router tokenizes before its queue for the same reason).
2. Gather: with the model idle, the first tokenized search opens a window: a round starts once `max_wait_ms` has
   passed or the queued pairs fill one micro-batch (`max_batch_tokens`); searches tokenized while the model was
   busy have waited already and go at once when its round ends.
3. Take searches earliest deadline first (with equal timeouts that is arrival order) up to `ROUND_BATCHES`
   micro-batches' worth of tokens, at least one search; the rest wait for the next round.
4. Flatten to (query, document) pairs, one per distinct pair, each with its rank: its document's position in its
   search (the cluster's order; a pair several searches want takes its best). Cut micro-batches so the padded size
   (longest pair x pairs) stays within `max_batch_tokens` and the count within `batch_size`, each one going to the
   model shortest first, off one of two orders, chosen before each micro-batch:
   - shortest first (across the round's searches), the fastest: little of a call is padding. Taken while the
     round has time to spare: `scheduling.TIME_TO_SPARE` times what its remaining pairs should take at the model's pace
     (`batching.Pace`: seconds per padded token, as its calls took them; the warm-up call's time seeds it slow, so
     a new model starts rank first) is left before the earliest deadline among its searches;
   - rank first otherwise (rank 0 of every search of the round, earliest deadline first, then rank 1, ...), so
     what a deadline leaves scored is the top of each window, a whole number of micro-batches (the pairs scored
     shortest first before the switch only fill it in sooner), which is what the proxy reorders
     (rerank/ranking.py), never a search's shortest documents. Near the deadline its calls shrink to what the
     pace fits before it, so the last ones still land. Its price is the padding of mixed lengths: about nothing
     where documents fill the model's `max_length` (SciFact, Medline), 1.8-2x the CPU time for short ones (Vaswani,
     XQuAD-R: 1.5-1.7x the padded tokens).
5. Run the micro-batches one by one on the model's thread (off the event loop); after each, resolve the searches
   whose pairs are all scored. Before each, pairs whose searches have all passed their deadline (or whose callers
   left) are dropped, never scored; a cancelled search leaves the queue at once, wherever it waits.

A caller waits until its deadline at most: with some pairs scored by then it gets those scores and None for the
rest (the proxy answers `partial`; when time ran short the scored ones are the top of its window, from the
cluster's first hit down, besides any score-cache hits), with none it gets TimeoutError.

Per-model knobs live in the model's spec (`max_wait_ms`, `max_batch_tokens`, `score_cache_entries`, `max_queue`);
with `max_batch_tokens` unset, a local backend's device decides it (`BaseSpec.batch_tokens`).

Loading runs as a background task per model. `start()` waits for every model's first attempt, `start(wait=False)`
returns at once; meanwhile a search gets `ModelLoading`. A model whose load or warm-up fails is tried again, after
`load_retry_s`, doubled for each next attempt up to `load_retry_max_s` (a little jitter), for as long as the engine
lives: a model fixed on disk (or a remote service that comes back) is picked up without a restart.

Each model has a circuit breaker (rerank/circuit.py, `BaseSpec.circuit`): a run of failed searches (the model
raised, or the deadline passed with the search not wholly scored) opens it, and searches then get `CircuitOpen` at
once, until a single trial search after `open_s` succeeds. A search refused as `Overloaded` says nothing about the
model and does not count; a search served wholly from the score cache never reaches the model nor the breaker.

A worker's two tasks, its load attempts and its queue (started with them, idle until `Reconfigure` brings the loaded
model), are kept and awaited when it closes: waiting searches then get `ModelUnavailable`.
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
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from . import metrics
from .backend import Encoding, PairEncoder, Scorer, text_key
from .batching import Pace
from .circuit import CircuitBreaker, Ticket
from .lru import LRU
from .registry import load_scorer
from .scheduling import (
    Pair,
    Round,
    Search,
    admit,
    gathered,
    merge_pairs,
    next_batch,
    split_unwanted,
    take_round,
    take_within,
)
from .spec import ModelSpec, MxbaiV2Spec

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE = 256  # searches queued or being scored, per model
ROUND_BATCHES = 4  # a round takes about this many micro-batches of work: enough to sort lengths, short enough
# that a search arriving meanwhile soon gets its turn (deadline order is decided per round)
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


def _close_when_loaded(loading: Future[Scorer]) -> None:
    if not loading.cancelled() and loading.exception() is None:
        _close_quietly(loading.result())


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


@dataclass(eq=False, kw_only=True)
class Job(Search):
    """One search sent to a model's queue: its pairs that missed the score cache, and where their scores go. The
    door makes it; from `Append` on, only the queue's task writes to it (until the door cancels its future)."""

    query: str
    todo: list[tuple[int, str, bytes]]  # (position, document, document hash) of the pairs the model must score
    scores: list[float | None]  # filled in place: cache hits by the door, model scores as micro-batches finish
    future: asyncio.Future[list[float | None]]  # its scores, once all are in, or the error; cancelled = given up
    enqueued: float  # the event loop's clock, as the deadline
    encodings: Sequence[Encoding | None] = ()  # per todo pair, once tokenized, when the backend is a PairEncoder
    left: int = 0  # todo pairs not scored yet, once tokenized
    timing: ScoreTiming | None = None  # the caller's, filled in as the search goes


@dataclass(eq=False)
class ScoreTiming:
    """How one search's scoring went in the engine, for the caller's own record of the request (its access-log line,
    its trace spans): filled in by the engine as it goes, read once the score call has returned. Times are
    `time.perf_counter()` seconds; durations are the ones the engine's metrics observe. Left at None/0 for a search
    answered at the door (all from the score cache, or refused)."""

    enqueued: float | None = None  # when the search was sent to the model's queue
    queue_s: float | None = None  # how long it waited before its first micro-batch (`rerank_queue_wait_seconds`)
    model_s: float = 0.0  # the model calls that scored its pairs, added up (`rerank_model_batch_seconds`)
    model_started: float | None = None  # the first of those calls began
    model_ended: float | None = None  # the last one ended


# ---- the queue's messages -------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Append:
    """A caller's search, to tokenize and score."""

    job: Job


@dataclass(frozen=True, eq=False)
class Cancel:
    """The caller stopped waiting (`reason`: deadline, or abandoned when it was cancelled itself): the search's pairs
    not yet in a model call are dropped, never scored."""

    job: Job
    reason: str


@dataclass(frozen=True, eq=False)
class Reconfigure:
    """What the queue scores with, from now on; a field left None is kept. `scorer` is the loaded backend (the queue
    tokenizes and scores nothing before it has one), `settings` how it cuts calls, `pace` the model's measured speed
    (the warm-up's time seeds it)."""

    scorer: Scorer | None = None
    settings: BatchSettings | None = None
    pace: Pace | None = None


@dataclass(frozen=True, eq=False)
class Shutdown:
    """Stop: every search the queue holds gets `error`; model and tokenizer calls under way are left to finish."""

    error: Exception


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Ask for a `QueueState`, as it stands once the messages sent before are handled and acted on."""

    reply: asyncio.Future[QueueState]


@dataclass(frozen=True, eq=False)
class _Tokenized:
    call: _Tokenizing


@dataclass(frozen=True, eq=False)
class _Scored:
    batch: list[Pair[Job]]
    result: asyncio.Future[list[float]]
    seconds: float  # from handing the call to the model thread to its result on the event loop
    started: float  # time.perf_counter() when it was handed over


@dataclass(frozen=True, eq=False)
class _WindowOver:
    at: float


Message = Append | Cancel | Reconfigure | Shutdown | Snapshot | _Tokenized | _Scored | _WindowOver


@dataclass(frozen=True)
class QueueState:
    """Searches per stage (a search of the current round counts until answered or gone), pairs in the model."""

    arrived: int  # waiting for the tokenizer
    tokenizing: int
    pending: int  # tokenized, waiting for a round
    in_round: int
    running_pairs: int  # in the model call under way
    window_open: bool
    stopped: bool


@dataclass(eq=False)
class _Tokenizing:
    """One tokenizer call: its searches, the token counts known before it (count path), the texts it counts."""

    jobs: list[Job]
    counts: dict[bytes, int]
    missing: list[bytes]
    result: asyncio.Future[Sequence[Any]] | None  # None: every count was known, nothing to call


def _score_batch(scorer: Scorer, encoder: PairEncoder | None, batch: list[Pair[Job]]) -> list[float]:
    """On the model thread: the encodings when the backend made them, else the texts."""
    if encoder is not None:
        scores = encoder.score_encoded([pair.encoding for pair in batch])
        if len(scores) != len(batch):
            raise RuntimeError(f"backend returned {len(scores)} scores for {len(batch)} pairs")
        return [float(value) for value in scores]
    return score_pairs(scorer, [pair.query for pair in batch], [pair.doc for pair in batch])


class ModelQueue:
    """A model's queue: the one task that owns it, fed by messages (`post`, or the helpers below). Its state
    (searches arrived, tokenizing, pending, the round, the call under way, the gathering window) is read and written
    by that task alone; searches get their scores through their job's future (and `Job.scores`)."""

    def __init__(
        self, name: str, *, instruction: str | None, scores: LRU[tuple[str | None, str, bytes], float],
        model_thread: ThreadPoolExecutor, tokens_thread: ThreadPoolExecutor, settings: BatchSettings,
        pace: Pace | None = None,
    ):
        self.name = name
        self._instruction = instruction
        self._scores = scores  # the model's score cache, shared with the door (which only reads it)
        self._model_thread = model_thread
        self._tokens_thread = tokens_thread
        self._mailbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # Owned by the task:
        self._scorer: Scorer | None = None
        self._encoder: PairEncoder | None = None  # the scorer, when it tokenizes ahead (the local backends)
        self._settings = settings
        self._pace = pace or Pace()
        self._token_counts: LRU[bytes, int] = LRU(TOKEN_COUNT_ENTRIES)
        self._arrived: deque[Job] = deque()
        self._tokenizing: _Tokenizing | None = None
        self._pending: list[Job] = []
        self._round: Round[Job] | None = None
        self._running: tuple[list[Pair[Job]], asyncio.Future[list[float]]] | None = None
        self._window_ends: float | None = None  # the gathering window, while one is open
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False

    # ---- for the senders ----------------------------------------------------------------------------------------
    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task that owns the queue, once started."""
        return self._task

    def start(self) -> None:
        if self._task is None and not self._stopped:
            self._task = asyncio.create_task(self._run(), name=f"queue-{self.name}")

    def post(self, message: Message) -> None:
        self._mailbox.put_nowait(message)

    def _post_when_done(self, future: asyncio.Future[Any], message: Message) -> None:
        future.add_done_callback(lambda _: self.post(message))

    def append(self, job: Job) -> None:
        self.post(Append(job))

    def cancel(self, job: Job, reason: str) -> None:
        self.post(Cancel(job, reason))

    def reconfigure(self, *, scorer: Scorer | None = None, settings: BatchSettings | None = None,
                    pace: Pace | None = None) -> None:
        self.post(Reconfigure(scorer, settings, pace))

    async def snapshot(self) -> QueueState:
        """The queue's state once what was sent before is handled and acted on (of a started queue)."""
        reply: asyncio.Future[QueueState] = asyncio.get_running_loop().create_future()
        self.post(Snapshot(reply))
        return await reply

    async def shutdown(self, error: Exception) -> None:
        """Send `Shutdown` and wait for the task to end (at once when it never started)."""
        if self._task is None:
            self._stop(error)
            return
        self.post(Shutdown(error))
        await asyncio.gather(self._task, return_exceptions=True)

    # ---- the task -------------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while not self._stopped:
                message = await self._mailbox.get()
                snapshots: list[asyncio.Future[QueueState]] = []
                while True:  # every message that has arrived, then act once on them all
                    if isinstance(message, Snapshot):
                        snapshots.append(message.reply)
                    else:
                        self._guarded(self._handle, message)
                    if self._stopped or self._mailbox.empty():
                        break
                    message = self._mailbox.get_nowait()
                if not self._stopped:
                    self._guarded(self._act)
                for reply in snapshots:
                    if not reply.done():
                        reply.set_result(self._state())
        finally:
            self._stop(ModelUnavailable(f"model {self.name} was unloaded"))

    def _guarded(self, step: Callable[..., None], *args: object) -> None:
        """A bug here must not leave callers waiting for their deadline, round after round: the searches the queue
        holds (not those in a call under way, which report back) fail with it, and the queue goes on."""
        try:
            step(*args)
        except Exception as err:
            log.exception("model %s: scoring round failed", self.name)
            held = [*self._arrived, *self._pending, *(self._round.searches if self._round else ())]
            self._arrived.clear()
            self._pending.clear()
            self._round = None
            self._close_window()
            for job in held:
                self._fail(job, err)

    def _handle(self, message: Message) -> None:
        match message:
            case Append(job):
                self._arrived.append(job)
            case Cancel(job, reason):
                self._cancelled(job, reason)
            case Reconfigure(scorer, settings, pace):
                if scorer is not None:
                    self._scorer = scorer
                    self._encoder = scorer if isinstance(scorer, PairEncoder) else None
                if settings is not None:
                    self._settings = settings
                if pace is not None:
                    self._pace = pace
            case Shutdown(error):
                self._stop(error)
            case _Tokenized(call):
                self._tokenized(call)
            case _Scored():
                self._scored(message)
            case _WindowOver(at):
                if self._window_ends == at:  # the window's time is up: it ends now (the timer may run a hair early)
                    self._window_ends = min(at, asyncio.get_running_loop().time())
                    self._timer = None

    def _act(self) -> None:
        """Start what can start: the next tokenizer call; with the model idle, its next micro-batch, taking a round
        when the last one is over (at once if searches waited meanwhile, else once `gathered`)."""
        if self._scorer is None:
            return
        loop = asyncio.get_running_loop()
        self._tokenize_next(loop)
        if self._running is not None:
            return
        now = loop.time()
        while True:
            if self._round is None:
                if not self._pending:
                    self._close_window()  # the next search to come opens a window of its own
                    return
                if not self._gathered(loop, now):
                    return
                self._take_round(now)
                continue
            settings = self._settings
            batch, dropped = next_batch(self._round, self._pace.seconds_per_token, now, settings.batch_size,
                                        settings.max_batch_tokens)
            for _, reason in dropped:
                metrics.DROPPED.labels(self.name, reason).inc()
            if batch:
                self._start_batch(loop, batch)
                return
            self._round = None
            if self._pending:  # they waited while the model was busy: no window
                self._take_round(now)

    # ---- Cancel -----------------------------------------------------------------------------------------------
    def _cancelled(self, job: Job, reason: str) -> None:
        if job.over is not None:  # answered or failed meanwhile
            return
        job.over = reason
        if not job.future.done():
            job.future.cancel()
        if job in self._arrived:
            self._arrived.remove(job)
            metrics.DROPPED.labels(self.name, reason).inc(len(job.todo))
        elif job in self._pending:
            self._pending.remove(job)
            metrics.DROPPED.labels(self.name, reason).inc(job.left)
        # Being tokenized: dropped once it is. In the round: its pairs are dropped at the next cut, unless another
        # search wants them. In the model call under way: scored all the same, and cached.

    # ---- tokenizing -------------------------------------------------------------------------------------------
    def _tokenize_next(self, loop: asyncio.AbstractEventLoop) -> None:
        """Unless a tokenizer call is under way, start one for the searches arrived: whole searches, up to
        COUNT_CHUNK texts, at least one."""
        while self._tokenizing is None and self._arrived:
            taken = take_within((len(job.todo) + 1 for job in self._arrived), COUNT_CHUNK)
            chunk = [self._arrived.popleft() for _ in range(taken)]
            jobs, gone = split_unwanted(chunk, loop.time())
            for job, reason in gone:
                metrics.DROPPED.labels(self.name, reason).inc(len(job.todo))
            if not jobs:
                continue
            try:
                call = self._tokenizer_call(loop, jobs)
            except Exception as err:  # noqa: BLE001  # the backend could not start it: these searches fall back
                self._tokenizer_failed(jobs, err)
                continue
            if call.result is None:
                self._tokenized(call)
            else:
                self._tokenizing = call
                self._post_when_done(call.result, _Tokenized(call))

    def _tokenizer_call(self, loop: asyncio.AbstractEventLoop, jobs: list[Job]) -> _Tokenizing:
        assert self._scorer is not None
        encoder = self._encoder
        if encoder is not None:
            queries = [job.query for job in jobs for _ in job.todo]
            docs = [doc for job in jobs for _, doc, _ in job.todo]
            return _Tokenizing(jobs, {}, [], loop.run_in_executor(self._tokens_thread, encoder.encode_pairs, queries,
                                                                  docs))
        # Pair sizes estimated from each text's token count, for a backend that does not tokenize ahead.
        counts: dict[bytes, int] = {}
        missing: dict[bytes, str] = {}
        for job in jobs:
            for key, text in ((text_key(job.query), job.query), *((k, d) for _, d, k in job.todo)):
                known = self._token_counts.get(key)
                if known is not None:
                    counts[key] = known
                else:
                    missing[key] = text
        if not missing:
            return _Tokenizing(jobs, counts, [], None)
        counter = self._scorer.count_tokens
        return _Tokenizing(jobs, counts, list(missing),
                           loop.run_in_executor(self._tokens_thread, counter, list(missing.values())))

    def _tokenized(self, call: _Tokenizing) -> None:
        if self._tokenizing is call:
            self._tokenizing = None
        if call.result is not None:
            if call.result.cancelled():  # stopped meanwhile
                return
            if (err := call.result.exception()) is not None:
                self._tokenizer_failed(call.jobs, err)
                return
        try:
            self._sized(call)
        except Exception as err:  # noqa: BLE001  # e.g. the backend answered for fewer texts than it was given
            self._tokenizer_failed(call.jobs, err)
            return
        for job in call.jobs:
            if job.over is not None:  # its caller left while it was tokenized
                metrics.DROPPED.labels(self.name, job.over).inc(len(job.todo))
                continue
            job.left = len(job.todo)
            self._pending.append(job)

    def _sized(self, call: _Tokenizing) -> None:
        """Each job's tokens (and encodings) from the call's result."""
        found: list[Any] = list(call.result.result()) if call.result is not None else []
        if self._encoder is not None:
            pairs = sum(len(job.todo) for job in call.jobs)
            if len(found) != pairs:
                raise RuntimeError(f"backend encoded {len(found)} pairs of {pairs}")
            start = 0
            for job in call.jobs:
                encodings = found[start : start + len(job.todo)]
                job.encodings, job.tokens = encodings, [encoding.tokens for encoding in encodings]
                start += len(job.todo)
            return
        if len(found) != len(call.missing):
            raise RuntimeError(f"backend counted {len(found)} texts of {len(call.missing)}")
        counts = call.counts
        for key, n in zip(call.missing, found):
            counts[key] = n
            self._token_counts.put(key, n)
        cap = getattr(self._scorer, "max_length", None)
        for job in call.jobs:
            query_tokens = counts[text_key(job.query)] + PAIR_SPECIAL_TOKENS
            job.tokens = [query_tokens + counts[k] for _, _, k in job.todo]
            if isinstance(cap, int):
                job.tokens = [min(n, cap) for n in job.tokens]
            job.encodings = [None] * len(job.todo)

    def _tokenizer_failed(self, jobs: list[Job], err: BaseException) -> None:
        """The backend could not tokenize: these searches fall back, later ones still try."""
        metrics.MODEL_ERRORS.labels(self.name).inc()
        log.warning("model %s: counting tokens failed: %s", self.name, _describe(err))
        for job in jobs:
            self._fail(job, err)

    # ---- rounds and micro-batches -----------------------------------------------------------------------------
    def _gathered(self, loop: asyncio.AbstractEventLoop, now: float) -> bool:
        """Whether the pending searches make a round now; the first of them, with the model idle, opens the window."""
        if self._window_ends is None:
            self._window_ends = now + self._settings.max_wait_s
        queued = sum(sum(job.tokens) for job in self._pending if job.over is None)
        if gathered(queued, self._settings.max_batch_tokens, now, self._window_ends):
            return True
        if self._timer is None:
            at = self._window_ends
            self._timer = loop.call_at(at, self.post, _WindowOver(at))
        return False

    def _close_window(self) -> None:
        self._window_ends = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _take_round(self, now: float) -> None:
        """The next round: earliest deadline first, about ROUND_BATCHES micro-batches of tokens; its pairs merged."""
        self._close_window()
        live, gone = split_unwanted(self._pending, now)
        for job, reason in gone:
            metrics.DROPPED.labels(self.name, reason).inc(job.left)
        settings = self._settings
        jobs, self._pending = take_round(live, settings.max_batch_tokens * ROUND_BATCHES)
        if not jobs:
            return
        wanted: list[tuple[Job, int, str, str, Hashable, int, Encoding | None]] = []
        for job in jobs:
            metrics.QUEUE_WAIT.labels(self.name).observe(now - job.enqueued)
            if job.timing is not None:
                job.timing.queue_s = now - job.enqueued
            for (i, doc, doc_key), tokens, encoding in zip(job.todo, job.tokens, job.encodings):
                key = (self._instruction, job.query, doc_key)
                cached = self._scores.get(key)  # scored since the job was sent (the same page, asked twice)
                if cached is not None:
                    self._deliver(job, i, cached)
                else:
                    wanted.append((job, i, job.query, doc, key, tokens, encoding))  # a scheduling.Wanted
        self._round = Round.of(jobs, merge_pairs(wanted), settings.batch_size, settings.max_batch_tokens)

    def _start_batch(self, loop: asyncio.AbstractEventLoop, batch: list[Pair[Job]]) -> None:
        assert self._scorer is not None
        started = time.perf_counter()
        result = loop.run_in_executor(self._model_thread, _score_batch, self._scorer, self._encoder, batch)
        self._running = (batch, result)
        result.add_done_callback(lambda done: self.post(_Scored(batch, done, time.perf_counter() - started, started)))

    def _scored(self, message: _Scored) -> None:
        batch, result = message.batch, message.result
        if self._running is not None and self._running[1] is result:
            self._running = None
        if result.cancelled():  # stopped meanwhile
            return
        if (err := result.exception()) is not None:  # fails the searches in this batch only: they fall back
            metrics.MODEL_ERRORS.labels(self.name).inc()
            log.warning("model %s: a batch of %d pairs failed: %s", self.name, len(batch), _describe(err))
            for pair in batch:
                for job, _ in pair.targets:
                    self._fail(job, err)
            return
        scores = result.result()
        real = sum(pair.tokens for pair in batch)
        padded = len(batch) * max(pair.tokens for pair in batch)
        self._pace.observe(padded, message.seconds)
        metrics.BATCH_SECONDS.labels(self.name).observe(message.seconds)
        metrics.PAIRS.labels(self.name).inc(len(batch))
        metrics.BATCH_PAIRS.labels(self.name).observe(len(batch))
        metrics.BATCH_FILL.labels(self.name).observe(real / padded if padded else 1.0)
        metrics.BATCH_TOKENS.labels(self.name, "real").inc(real)
        metrics.BATCH_TOKENS.labels(self.name, "padding").inc(padded - real)
        _timed({job for pair in batch for job, _ in pair.targets}, message)
        for pair, value in zip(batch, scores):
            self._scores.put(pair.key, value)  # type: ignore[arg-type]  # also when its searches gave up meanwhile
            for job, i in pair.targets:
                self._deliver(job, i, value)

    # ---- answers ----------------------------------------------------------------------------------------------
    @staticmethod
    def _deliver(job: Job, i: int, value: float) -> None:
        if job.over is not None or job.future.done():
            return
        job.scores[i] = value
        job.left -= 1
        if job.left == 0:
            job.over = "done"
            job.future.set_result(job.scores)

    @staticmethod
    def _fail(job: Job, err: BaseException) -> None:
        if job.over is None:
            job.over = "error"
        if not job.future.done():
            job.future.set_exception(err)

    def _stop(self, error: Exception) -> None:
        """Every search held fails with `error`; calls under way are let go (their results are not awaited)."""
        if self._stopped:
            return
        self._stopped = True
        self._close_window()
        held: list[Job] = [*self._arrived, *self._pending]
        if self._tokenizing is not None:
            held += self._tokenizing.jobs
            if self._tokenizing.result is not None:
                self._tokenizing.result.cancel()
        if self._round is not None:
            held += self._round.searches
        if self._running is not None:
            held += [job for pair in self._running[0] for job, _ in pair.targets]
            self._running[1].cancel()
        while not self._mailbox.empty():  # sent after the Shutdown, or before a cancellation of the task
            match self._mailbox.get_nowait():
                case Append(job):
                    held.append(job)
                case Snapshot(reply) if not reply.done():
                    reply.set_result(self._state())
        self._arrived.clear()
        self._pending.clear()
        self._tokenizing = self._round = self._running = None
        for job in held:
            self._fail(job, error)

    def _state(self) -> QueueState:
        return QueueState(
            arrived=len(self._arrived),
            tokenizing=len(self._tokenizing.jobs) if self._tokenizing else 0,
            pending=len(self._pending),
            in_round=sum(1 for job in self._round.searches if job.over is None) if self._round else 0,
            running_pairs=len(self._running[0]) if self._running else 0,
            window_open=self._window_ends is not None,
            stopped=self._stopped,
        )


def _timed(jobs: set[Job], call: _Scored) -> None:
    """A model call that scored pairs of `jobs`, on each one's timing (once per call, however many pairs it had)."""
    ended = call.started + call.seconds
    for job in jobs:
        timing = job.timing
        if timing is not None:
            timing.model_s += call.seconds
            if timing.model_started is None:
                timing.model_started = call.started
            timing.model_ended = ended


class _ModelWorker:
    """One model: its loading (and retries), circuit breaker and score cache, the door searches come in by, and
    its queue."""

    def __init__(self, name: str, spec: ModelSpec, max_queue: int, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.spec = spec
        self.settings = BatchSettings.of(spec, max_queue)
        self.instruction = spec.instruction if isinstance(spec, MxbaiV2Spec) else None
        self.scorer: Scorer | None = None
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
        self._in_flight = 0  # searches sent to the queue and not answered yet: what max_queue bounds
        self._seq = itertools.count()
        self._scores: LRU[tuple[str | None, str, bytes], float] = LRU(self.settings.score_cache_entries)
        self._pace = Pace()  # the model's seconds per padded token: whether a round has time to go shortest first
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"model-{name}")
        self._tokens_thread = ThreadPoolExecutor(1, thread_name_prefix=f"tokens-{name}")
        self._queue = ModelQueue(
            name, instruction=self.instruction, scores=self._scores, model_thread=self._thread,
            tokens_thread=self._tokens_thread, settings=self.settings, pace=self._pace,
        )

    @property
    def pace(self) -> Pace:
        """The model's pace, as its queue measures it (seeded by the warm-up)."""
        return self._pace

    @pace.setter
    def pace(self, pace: Pace) -> None:
        """Give the queue another measure of the model's speed (a test fixing how fast the model is)."""
        self._pace = pace
        self._queue.reconfigure(pace=pace)

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
        """Start loading in the background (attempts until one succeeds, or the worker closes), and the queue."""
        if self._load_task is None and not self._closed:
            self._queue.start()
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
            loading.add_done_callback(_close_when_loaded)
            raise
        except Exception as err:  # noqa: BLE001  # any loader error is a failed attempt, retried
            return _describe(err)
        try:
            seconds = await asyncio.wrap_future(self._thread.submit(_timed_warm_up, scorer))
            self._pace.observe(WARM_UP_TOKENS, seconds)
        except BaseException as err:
            self._discard(scorer)
            if not isinstance(err, Exception):
                raise
            return _describe(err)
        # A local backend knows its device, and so the call size its model runs best at (BaseSpec.batch_tokens and
        # batch_pairs).
        reported = {key: size for key in ("max_batch_tokens", "batch_size")
                    if isinstance(size := getattr(scorer, key, None), int)}
        self.settings = replace(self.settings, **reported)
        self.scorer = scorer
        self._queue.reconfigure(scorer=scorer, settings=self.settings, pace=self._pace)
        self.error = None
        breaker = self.breaker
        metrics.MODEL_UP.labels(self.name).set(1)
        metrics.CIRCUIT_STATE.labels(self.name).set_function(lambda: breaker.code)
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

    # ---- the door -----------------------------------------------------------------------------------------------
    async def score(
        self, query: str, docs: Sequence[str], timeout_s: float, timing: ScoreTiming | None = None
    ) -> list[float | None]:
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
            result = await self._send(query, scores, todo, timeout_s, timing)
            ok = all(score is not None for score in result)  # partial: the deadline passed first
            return result
        except (Overloaded, ModelUnavailable):
            raise
        except Exception:  # the model (or its tokenizer) raised, or nothing was scored by the deadline
            ok = False
            raise
        finally:
            self._record(ticket, ok)

    async def _send(
        self, query: str, scores: list[float | None], todo: list[tuple[int, str, bytes]], timeout_s: float,
        timing: ScoreTiming | None,
    ) -> list[float | None]:
        """Admit the search (or refuse it), send it to the queue and wait for it until its deadline at most."""
        refused = admit(self._in_flight, self.settings.max_queue)
        if refused is not None:
            metrics.REJECTED.labels(self.name, refused).inc()
            raise Overloaded(f"model {self.name} queue is full ({self.settings.max_queue} searches)")
        loop = asyncio.get_running_loop()
        now = loop.time()
        job = Job(seq=next(self._seq), deadline=now + timeout_s, query=query, todo=todo, scores=scores,
                  future=loop.create_future(), enqueued=now, timing=timing)
        if timing is not None:
            timing.enqueued = time.perf_counter()
        self._in_flight += 1
        job.future.add_done_callback(self._answered)
        metrics.QUEUE_DEPTH.labels(self.name).set(self._in_flight)
        self._queue.append(job)
        try:
            await asyncio.wait([job.future], timeout=max(0.0, job.deadline - loop.time()))
        finally:
            if not job.future.done():  # deadline passed or the caller was cancelled: the queue drops the rest
                job.future.cancel()
                self._queue.cancel(job, "deadline" if loop.time() >= job.deadline else "abandoned")
        if not job.future.cancelled():
            job.future.result()  # the model's error, if it failed
        if all(score is None for score in scores):
            raise TimeoutError(f"model {self.name}: no pair scored within {timeout_s:.3f}s")
        return list(scores)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _answered(self, _: object) -> None:
        self._in_flight -= 1
        metrics.QUEUE_DEPTH.labels(self.name).set(self._in_flight)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._attempted.set()  # nobody waits for a first attempt that will not come
        if self._load_task is not None:
            self._load_task.cancel()
        await asyncio.gather(
            self._queue.shutdown(ModelUnavailable(f"model {self.name} was unloaded")),
            *([self._load_task] if self._load_task else []), return_exceptions=True,
        )
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
            await self.first_attempts()

    async def first_attempts(self) -> None:
        """Returns once every model has finished its first load attempt (loaded, or failed and retrying)."""
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

    def in_flight(self) -> int:
        """Searches sent to the models' queues and not answered yet, every model together."""
        return sum(w.in_flight for w in self._workers.values())

    async def score(
        self, model: str, query: str, docs: Sequence[str], timeout_s: float, timing: ScoreTiming | None = None
    ) -> list[float | None]:
        """One score per document, in order. At the deadline, the scores so far and None for the rest; with none
        scored, TimeoutError. At once when the model cannot take the search: ModelLoading (not loaded yet),
        CircuitOpen (its breaker is open), Overloaded (its queue is full), ModelUnavailable (unknown or unloaded).
        `timing`: filled in with how long the search waited in the queue and in model calls."""
        worker = self._workers.get(model)
        if worker is None:
            raise ModelUnavailable(f"no model named {model}")
        if not docs:
            return []
        return await worker.score(query, docs, timeout_s, timing)

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
