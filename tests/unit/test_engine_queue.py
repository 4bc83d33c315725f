"""A model's queue (rerank/engine.py: ModelQueue), the one task that owns it, driven by its messages: Append, Cancel
(a caller went away: its pairs not yet in a model call are dropped), Reconfigure (the model, its batch settings, its
pace), Shutdown, Snapshot. A word-overlap scorer stands in for the model; threading events hold its calls (and its
tokenizer's) where a test needs them busy. Nothing waits on a clock: tests await futures, snapshots (answered once
the messages sent before are handled) and the tokenizer thread itself."""
from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import pytest
from prometheus_client import REGISTRY

from rerank.backend import text_key
from rerank.batching import Pace
from rerank.engine import BatchSettings, Job, ModelQueue, ModelUnavailable, QueueState
from rerank.lru import LRU
from tests.scorers import Overlap

_names = itertools.count()
SETTINGS = BatchSettings(max_wait_s=0.0, max_batch_tokens=1000, batch_size=32, score_cache_entries=1000,
                         max_queue=256)
IDLE = QueueState(arrived=0, tokenizing=0, pending=0, in_round=0, running_pairs=0, window_open=False, stopped=False)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class HeldTokenizer(Overlap):
    """Overlap whose token counting waits while `tokenizer_gate` is clear, after signalling `tokenizing`; a batch of
    texts holding "boom" cannot be counted."""

    def __init__(self) -> None:
        super().__init__()
        self.tokenizing = threading.Event()
        self.tokenizer_gate = threading.Event()
        self.tokenizer_gate.set()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        self.tokenizing.set()
        assert self.tokenizer_gate.wait(10), "test never released the tokenizer"
        if "boom" in texts:
            raise RuntimeError("tokenizer blew up")
        return super().count_tokens(texts)


@dataclass
class Harness:
    queue: ModelQueue
    name: str
    cache: LRU[tuple[str | None, str, bytes], float]
    tokens_thread: ThreadPoolExecutor

    def job(self, query: str, docs: Sequence[str], timeout_s: float = 60.0) -> Job:
        """A search as the door sends it (nothing cached): `timeout_s` from now on the queue's clock."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        return Job(seq=next(_names), deadline=now + timeout_s, query=query,
                   todo=[(i, doc, text_key(doc)) for i, doc in enumerate(docs)], scores=[None] * len(docs),
                   future=loop.create_future(), enqueued=now)

    async def settled(self) -> QueueState:
        """Once the queue has handled what was sent, the tokenizer call it started is over and its result handled."""
        await self.queue.snapshot()
        await asyncio.get_running_loop().run_in_executor(self.tokens_thread, lambda: None)
        return await self.queue.snapshot()

    def dropped(self, reason: str) -> float:
        return metric("rerank_pairs_dropped_total", model=self.name, reason=reason)


@asynccontextmanager
async def serving(scorer: Overlap | None, **settings: object) -> AsyncIterator[Harness]:
    """A started queue, scoring with `scorer` from its first message (None: no model yet)."""
    name = f"q{next(_names)}"
    cache: LRU[tuple[str | None, str, bytes], float] = LRU(1000)
    model_thread = ThreadPoolExecutor(1, thread_name_prefix=f"model-{name}")
    tokens_thread = ThreadPoolExecutor(1, thread_name_prefix=f"tokens-{name}")
    queue = ModelQueue(name, instruction=None, scores=cache, model_thread=model_thread, tokens_thread=tokens_thread,
                       settings=replace(SETTINGS, **settings))  # type: ignore[arg-type]
    queue.start()
    if scorer is not None:
        queue.reconfigure(scorer=scorer)
    try:
        yield Harness(queue, name, cache, tokens_thread)
    finally:
        if scorer is not None:
            scorer.release()
            if isinstance(scorer, HeldTokenizer):
                scorer.tokenizer_gate.set()
        await queue.shutdown(ModelUnavailable("test over"))
        model_thread.shutdown(wait=True)
        tokens_thread.shutdown(wait=True)


async def result(job: Job) -> list[float | None]:
    return await asyncio.wait_for(job.future, 10)


def pairs_of(job: Job) -> list[tuple[str, str]]:
    return [(job.query, doc) for _, doc, _ in job.todo]


# ---- Append -----------------------------------------------------------------------------------------------------------
async def test_searches_appended_together_are_tokenized_in_one_call_and_scored_in_one_batch() -> None:
    scorer = Overlap()
    async with serving(scorer) as h:
        a, b = h.job("apple pie", ["apple tart", "pie crust", "nothing"]), h.job("cherry", ["cherry cake"])
        h.queue.append(a)
        h.queue.append(b)
        assert (await result(a), await result(b)) == ([1.0, 1.0, 0.0], [1.0])
        assert scorer.counted == [["apple pie", "apple tart", "pie crust", "nothing", "cherry", "cherry cake"]]
        assert len(scorer.calls) == 1 and sorted(scorer.calls[0]) == sorted(pairs_of(a) + pairs_of(b))
        assert h.cache.get((None, "cherry", text_key("cherry cake"))) == 1.0  # what the door will find next time
        assert await h.queue.snapshot() == IDLE


async def test_the_same_pair_asked_by_two_searches_is_scored_once_and_given_to_both() -> None:
    scorer = Overlap()
    async with serving(scorer) as h:
        a, b = h.job("x y z", ["x", "y"]), h.job("x y z", ["y", "z"])
        h.queue.append(a)
        h.queue.append(b)
        assert (await result(a), await result(b)) == ([1.0, 1.0], [1.0, 1.0])
        assert sorted(scorer.calls[0]) == [("x y z", "x"), ("x y z", "y"), ("x y z", "z")]


async def test_a_queue_without_a_model_holds_its_searches_until_reconfigured_with_one() -> None:
    scorer = Overlap()
    async with serving(None) as h:
        a = h.job("q", ["q"])
        h.queue.append(a)
        assert await h.queue.snapshot() == replace(IDLE, arrived=1)
        assert not a.future.done() and scorer.counted == []
        h.queue.reconfigure(scorer=scorer)
        assert await result(a) == [1.0]


async def test_searches_wait_in_the_window_until_a_batch_worth_of_tokens_is_queued() -> None:
    scorer = Overlap()
    # 5 tokens a pair (1 query word + 1 document word + 3); a window that never ends by itself
    async with serving(scorer, max_wait_s=3600.0, max_batch_tokens=10) as h:
        a = h.job("q", ["d1"])
        h.queue.append(a)
        assert await h.settled() == replace(IDLE, pending=1, window_open=True)
        assert scorer.calls == []
        b = h.job("q", ["d2"])
        h.queue.append(b)  # 10 tokens queued: a micro-batch's worth, the round starts
        assert (await result(a), await result(b)) == ([0.0], [0.0])
        assert scorer.calls == [[("q", "d1"), ("q", "d2")]]


async def test_searches_that_arrive_while_the_model_is_busy_go_at_once_when_it_is_free() -> None:
    scorer = Overlap()
    async with serving(scorer) as h:
        scorer.hold()
        a = h.job("first", ["first"])
        h.queue.append(a)
        await scorer.busy()
        h.queue.reconfigure(settings=replace(SETTINGS, max_wait_s=3600.0))  # from now on no window ever ends
        b = h.job("second", ["second"])
        h.queue.append(b)
        assert await h.settled() == replace(IDLE, pending=1, in_round=1, running_pairs=1)
        scorer.release()
        assert (await result(a), await result(b)) == ([1.0], [1.0])  # b waited while a ran: no window for it


# ---- Cancel -----------------------------------------------------------------------------------------------------------
async def test_a_search_cancelled_before_it_is_tokenized_is_dropped() -> None:
    scorer = Overlap()
    async with serving(None) as h:
        gone, kept = h.job("gone", ["gone 1", "gone 2"]), h.job("kept", ["kept"])
        h.queue.append(gone)
        dropped = h.dropped("abandoned")
        h.queue.cancel(gone, "abandoned")
        assert await h.queue.snapshot() == IDLE
        assert gone.future.cancelled() and h.dropped("abandoned") == dropped + 2
        h.queue.reconfigure(scorer=scorer)
        h.queue.append(kept)
        assert await result(kept) == [1.0]
        assert scorer.counted == [["kept"]] and scorer.calls == [[("kept", "kept")]]  # query and document: one text


async def test_a_search_cancelled_while_it_is_tokenized_is_dropped_once_it_is() -> None:
    scorer = HeldTokenizer()
    async with serving(scorer) as h:
        scorer.tokenizer_gate.clear()
        gone = h.job("gone", ["gone 1", "gone 2"])
        h.queue.append(gone)
        assert await asyncio.to_thread(scorer.tokenizing.wait, 10)
        assert await h.queue.snapshot() == replace(IDLE, tokenizing=1)
        dropped = h.dropped("abandoned")
        h.queue.cancel(gone, "abandoned")
        scorer.tokenizer_gate.set()
        assert await h.settled() == IDLE
        assert h.dropped("abandoned") == dropped + 2 and scorer.calls == []


async def test_a_search_cancelled_while_it_waits_for_the_busy_model_leaves_the_queue() -> None:
    scorer = Overlap()
    async with serving(scorer) as h:
        scorer.hold()
        busy = h.job("busy", ["busy"])
        h.queue.append(busy)
        await scorer.busy()
        gone, kept = h.job("gone", ["gone 1", "gone 2"]), h.job("kept", ["kept"])
        h.queue.append(gone)
        h.queue.append(kept)
        assert await h.settled() == replace(IDLE, pending=2, in_round=1, running_pairs=1)
        dropped = h.dropped("deadline")
        h.queue.cancel(gone, "deadline")
        assert await h.queue.snapshot() == replace(IDLE, pending=1, in_round=1, running_pairs=1)
        assert h.dropped("deadline") == dropped + 2
        scorer.release()
        assert (await result(busy), await result(kept)) == ([1.0], [1.0])
        assert [call[0][0] for call in scorer.calls] == ["busy", "kept"]


async def test_a_cancelled_search_of_the_round_loses_its_pairs_not_yet_in_a_batch() -> None:
    scorer = Overlap()
    async with serving(scorer, batch_size=1) as h:
        scorer.hold()
        gone = h.job("gone", ["gone 1", "gone 2", "gone 3"])
        h.queue.append(gone)
        await scorer.busy()  # its first pair is in the model, the other two wait in the round
        assert await h.queue.snapshot() == replace(IDLE, in_round=1, running_pairs=1)
        dropped = h.dropped("abandoned")
        h.queue.cancel(gone, "abandoned")
        assert await h.queue.snapshot() == replace(IDLE, running_pairs=1)
        scorer.release()
        kept = h.job("kept", ["kept"])
        h.queue.append(kept)
        assert await result(kept) == [1.0]
        assert scorer.calls == [[("gone", "gone 1")], [("kept", "kept")]]
        assert h.dropped("abandoned") == dropped + 2
        # the pair in the model when its caller left was scored all the same, and cached, but not delivered
        assert h.cache.get((None, "gone", text_key("gone 1"))) == 1.0
        assert gone.scores == [None, None, None] and gone.future.cancelled()


async def test_a_pair_another_search_still_wants_survives_a_cancel() -> None:
    scorer = Overlap()
    async with serving(scorer) as h:
        scorer.hold()
        busy = h.job("busy", ["busy"])
        h.queue.append(busy)
        await scorer.busy()
        gone, kept = h.job("q", ["shared", "only gone"]), h.job("q", ["shared"])
        h.queue.append(gone)
        h.queue.append(kept)
        await h.settled()
        h.queue.cancel(gone, "abandoned")
        scorer.release()
        assert await result(kept) == [0.0]
        assert scorer.calls[1:] == [[("q", "shared")]]


async def test_a_search_past_its_deadline_is_never_tokenized_nor_scored() -> None:
    scorer = Overlap()
    async with serving(scorer) as h:
        late, kept = h.job("late", ["late 1", "late 2"], timeout_s=-1.0), h.job("kept", ["kept"])
        dropped = h.dropped("deadline")
        h.queue.append(late)
        h.queue.append(kept)
        assert await result(kept) == [1.0]
        assert scorer.counted == [["kept"]] and scorer.calls == [[("kept", "kept")]]  # query and document: one text
        assert h.dropped("deadline") == dropped + 2
        assert not late.future.done()  # its caller stops waiting by itself, at its deadline
        late.future.cancel()


# ---- Reconfigure ---------------------------------------------------------------------------------------------------
async def test_reconfigured_settings_cut_the_next_searches_calls() -> None:
    scorer = Overlap()
    async with serving(scorer, batch_size=1) as h:
        a = h.job("q", ["a1", "a2", "a3"])
        h.queue.append(a)
        await result(a)
        assert [len(call) for call in scorer.calls] == [1, 1, 1]
        h.queue.reconfigure(settings=replace(SETTINGS, batch_size=8))
        b = h.job("q", ["b1", "b2", "b3"])
        h.queue.append(b)
        await result(b)
        assert [len(call) for call in scorer.calls] == [1, 1, 1, 3]


def fixed_pace(seconds_per_token: float) -> Pace:
    pace = Pace()
    pace.observe(10**12, seconds_per_token * 10**12)
    return pace


LONGEST_FIRST = ["d0 " * 9, "d1 " * 8, "d2 " * 7, "d3 " * 6, "d4 " * 2, "d5"]


@pytest.mark.parametrize(("seconds_per_token", "calls"), [
    (1e-9, [["d5", "d4"], ["d3", "d2"], ["d1", "d0"]]),  # time to spare: shortest first
    (100.0, [["d0"], ["d1"], ["d2"], ["d3"], ["d4"], ["d5"]]),  # short of time: rank first, a pair a call
], ids=["fast", "slow"])
async def test_a_reconfigured_pace_decides_the_order(seconds_per_token: float, calls: list[list[str]]) -> None:
    scorer = Overlap()
    async with serving(scorer, batch_size=2) as h:
        h.queue.reconfigure(pace=fixed_pace(seconds_per_token))
        search = h.job("q", [doc.strip() for doc in LONGEST_FIRST])
        h.queue.append(search)
        await result(search)
        assert [[doc.split()[0] for _, doc in call] for call in scorer.calls] == calls


# ---- Shutdown -------------------------------------------------------------------------------------------------------
async def test_shutdown_fails_every_search_the_queue_holds_and_ends_its_task() -> None:
    scorer = Overlap()
    async with serving(scorer) as h:
        scorer.hold()
        running, waiting = h.job("running", ["running"]), h.job("waiting", ["waiting"])
        h.queue.append(running)
        await scorer.busy()
        h.queue.append(waiting)
        await h.settled()
        error = ModelUnavailable("unloaded")
        await h.queue.shutdown(error)
        assert running.future.exception() is error and waiting.future.exception() is error
        assert h.queue.task is not None and h.queue.task.done()
        scorer.release()


async def test_shutdown_of_a_queue_never_started_fails_what_was_sent() -> None:
    queue = ModelQueue("never-started", instruction=None, scores=LRU(10), model_thread=ThreadPoolExecutor(1),
                       tokens_thread=ThreadPoolExecutor(1), settings=SETTINGS)
    loop = asyncio.get_running_loop()
    job = Job(seq=0, deadline=loop.time() + 60, query="q", todo=[(0, "q", text_key("q"))], scores=[None],
              future=loop.create_future(), enqueued=loop.time())
    queue.append(job)
    error = ModelUnavailable("unloaded")
    await queue.shutdown(error)
    assert job.future.exception() is error


# ---- failures -------------------------------------------------------------------------------------------------------
async def test_a_model_error_fails_that_batch_and_the_queue_keeps_serving() -> None:
    scorer = Overlap()
    scorer.fail_on = {"boom"}
    async with serving(scorer, batch_size=1) as h:
        boom, fine = h.job("boom", ["boom"], timeout_s=30), h.job("fine", ["fine"])  # boom's deadline first
        h.queue.append(boom)
        h.queue.append(fine)
        with pytest.raises(RuntimeError, match="blew up"):
            await result(boom)
        assert await result(fine) == [1.0]
        assert metric("rerank_model_errors_total", model=h.name) == 1


async def test_a_tokenizer_error_fails_that_call_and_the_queue_keeps_serving() -> None:
    scorer = HeldTokenizer()
    async with serving(scorer) as h:
        boom = h.job("boom", ["doc"])
        h.queue.append(boom)
        with pytest.raises(RuntimeError, match="tokenizer blew up"):
            await result(boom)
        fine = h.job("fine", ["fine"])
        h.queue.append(fine)
        assert await result(fine) == [1.0]
        assert metric("rerank_model_errors_total", model=h.name) == 1
