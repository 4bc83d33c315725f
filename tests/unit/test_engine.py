"""The batching engine: cross-search packing, token-budgeted length-sorted micro-batches, deadlines, overload,
score cache, failures. A word-overlap scorer stands in for the model; a threading.Event holds its calls where a
test needs the model busy."""
from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may try the network

import pytest
from prometheus_client import REGISTRY

from rerank import engine as engine_module
from rerank.backend import ModelLoadError
from rerank.batching import Pace
from rerank.engine import (
    ROUND_BATCHES,
    ModelLoading,
    ModelUnavailable,
    Overloaded,
    ScoringEngine,
)
from rerank.spec import BiEncoderSpec, CrossEncoderSpec, ModelSpec, MxbaiV2Spec
from tests.scorers import Overlap, overlap

_names = itertools.count()
PAIR_EXTRA = 3  # the engine's per-pair special-token estimate


@dataclass(frozen=True)
class WordPair:
    """EncodingOverlap's encoding: a pair and a size unlike the count estimate (2 tokens a word), to tell them apart."""

    query: str
    doc: str

    @property
    def tokens(self) -> int:
        return 2 * (len(self.query.split()) + len(self.doc.split()))


class EncodingOverlap(Overlap):
    """Overlap as a PairEncoder, like the local backends: pairs are encoded ahead, then their encodings scored."""

    def __init__(self) -> None:
        super().__init__()
        self.encoded: list[list[tuple[str, str]]] = []
        self.text_calls = 0  # score_pairs / score: the engine should never need them

    def encode_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> list[WordPair]:
        self.encoded.append(list(zip(queries, docs)))
        self.counting.set()
        return [WordPair(q, d) for q, d in zip(queries, docs)]

    def score_encoded(self, pairs: Sequence[WordPair]) -> list[float]:
        assert all(isinstance(pair, WordPair) for pair in pairs)
        return super().score_pairs([pair.query for pair in pairs], [pair.doc for pair in pairs])

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> list[float]:
        self.text_calls += 1
        return self.score_encoded([WordPair(q, d) for q, d in zip(queries, docs)])


class ScoreOnly:
    """A backend with only `score(query, docs)`, like a third-party one: the engine's fallback path."""

    name = "score-only"

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(text.split()) for text in texts]

    def score(self, query: str, docs: Sequence[str]) -> list[float]:
        self.calls.append((query, list(docs)))
        return [overlap(query, d) for d in docs]


async def started(scorer: object, max_queue: int = 256, **knobs: object) -> tuple[ScoringEngine, str]:
    """An engine serving `scorer` under a fresh model name (metrics are process-wide), warm-up call forgotten."""
    name = f"m{next(_names)}"
    spec = CrossEncoderSpec(source="test", **knobs)
    engine = ScoringEngine({name: spec}, loader=lambda _name, _spec: scorer, max_queue=max_queue)
    await engine.start()
    scorer.calls.clear()  # type: ignore[attr-defined]
    return engine, name


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def words(n: int, word: str = "w") -> str:
    return " ".join([word] * n)


async def test_concurrent_searches_are_packed_into_one_backend_call() -> None:
    scorer = Overlap()
    engine, m = await started(scorer)
    searches = {"apple pie": ["apple tart", "pie crust", "nothing"], "cherry cake": ["cherry cake", "cake"]}
    results = await asyncio.gather(*(engine.score(m, q, docs, 5) for q, docs in searches.items()))
    assert len(scorer.calls) == 1
    assert sorted(scorer.calls[0]) == sorted((q, d) for q, docs in searches.items() for d in docs)
    assert results == [[1.0, 1.0, 0.0], [2.0, 1.0]]
    await engine.close()


async def test_a_search_counts_its_new_texts_in_one_backend_call_and_known_ones_not_again() -> None:
    scorer = Overlap()
    engine, m = await started(scorer, score_cache_entries=0)
    scorer.counted.clear()
    await engine.score(m, "apple pie", ["apple tart", "pie crust"], 5)
    await engine.score(m, "apple pie", ["pie crust", "new doc"], 5)
    assert scorer.counted == [["apple pie", "apple tart", "pie crust"], ["new doc"]]
    await engine.close()


async def test_a_burst_is_counted_in_chunks_of_whole_searches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "COUNT_CHUNK", 4)
    scorer = Overlap()
    engine, m = await started(scorer, score_cache_entries=0)
    scorer.counted.clear()
    searches = [("a", ["a1", "a2"]), ("b", ["b1", "b2", "b3", "b4"]), ("c", ["c1"])]
    await asyncio.gather(*(engine.score(m, q, docs, 5) for q, docs in searches))
    assert scorer.counted == [["a", "a1", "a2"], ["b", "b1", "b2", "b3", "b4"], ["c", "c1"]]  # b alone: over 4
    await engine.close()


async def test_a_pair_encoder_has_each_search_encoded_once_and_its_encodings_scored() -> None:
    scorer = EncodingOverlap()
    engine, m = await started(scorer, score_cache_entries=0)
    scorer.encoded.clear()
    scorer.text_calls = 0
    searches = {"apple pie": ["apple tart", "pie crust"], "cherry cake": ["cherry cake"]}
    results = await asyncio.gather(*(engine.score(m, q, docs, 5) for q, docs in searches.items()))
    assert results == [[1.0, 1.0], [2.0]]
    assert scorer.encoded == [[("apple pie", "apple tart"), ("apple pie", "pie crust"), ("cherry cake", "cherry cake")]]
    assert scorer.counted == [] and scorer.text_calls == 0  # no count estimate, no text on the model thread
    await engine.close()


async def test_a_pair_encoders_micro_batches_are_cut_by_the_encodings_own_lengths() -> None:
    scorer = EncodingOverlap()
    budget = 40
    engine, m = await started(scorer, max_batch_tokens=budget, batch_size=8)
    docs = [words(n, f"d{i}") for i, n in enumerate([1, 2, 3, 4, 5, 6])]
    await engine.score(m, "q", docs, 5)
    sizes = [[WordPair(q, d).tokens for q, d in call] for call in scorer.calls]
    # 2 tokens a word: [4, 6, 8, 10, 12, 14]; by the count estimate (1 a word + 3) all six would fit in one call
    assert sizes == [[4, 6, 8, 10], [12, 14]]
    assert metric("rerank_batch_tokens_total", model=m, kind="real") == sum(map(sum, sizes))
    await engine.close()


@pytest.mark.parametrize(("backend", "record", "expected"), [
    (Overlap, "counted", [["second", "second doc"]]),
    (EncodingOverlap, "encoded", [[("second", "second doc")]]),
], ids=["counted", "encoded"])
async def test_searches_are_tokenized_while_the_model_scores_others(backend: type[Overlap], record: str,
                                                                     expected: list[list[object]]) -> None:
    scorer = backend()
    engine, m = await started(scorer)
    scorer.hold()
    first = asyncio.create_task(engine.score(m, "first", ["first doc"], 10))
    await scorer.busy()
    getattr(scorer, record).clear()
    scorer.counting.clear()
    second = asyncio.create_task(engine.score(m, "second", ["second doc"], 10))
    assert await asyncio.to_thread(scorer.counting.wait, 10), "never tokenized"
    assert getattr(scorer, record) == expected and not scorer.gate.is_set()  # the model is still held
    scorer.release()
    assert (await first, await second) == ([1.0], [1.0])
    await engine.close()


async def test_a_backend_that_cannot_encode_fails_those_searches_and_the_engine_keeps_serving() -> None:
    scorer = EncodingOverlap()
    engine, m = await started(scorer)
    encode = scorer.encode_pairs

    def broken(queries: Sequence[str], docs: Sequence[str]) -> list[WordPair]:
        if "boom" in queries:
            raise RuntimeError("tokenizer blew up")
        return encode(queries, docs)

    scorer.encode_pairs = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="tokenizer blew up"):
        await engine.score(m, "boom", ["doc"], 5)
    assert await engine.score(m, "fine", ["fine"], 5) == [1.0]
    await engine.close()


async def test_searches_queued_while_the_model_is_busy_share_the_next_call_and_get_their_own_scores() -> None:
    scorer = Overlap()
    engine, m = await started(scorer)
    scorer.hold()
    first = asyncio.create_task(engine.score(m, "first", ["first doc"], 10))
    await scorer.busy()
    searches = [("red fox", ["red fox", "fox", "red", "blue"]), ("blue sky", ["sky", "blue sky", "red fox"]),
                ("red fox", ["blue", "red fox"])]  # a repeated pair is scored once, delivered to both searches
    queued = [asyncio.create_task(engine.score(m, q, docs, 10)) for q, docs in searches]
    await asyncio.sleep(0)  # let the tasks send their jobs
    assert metric("rerank_queue_searches", model=m) == 4
    scorer.release()
    assert await first == [1.0]
    results = await asyncio.gather(*queued)
    assert results == [[overlap(q, d) for d in docs] for q, docs in searches]
    assert len(scorer.calls) == 2
    assert sorted(scorer.calls[1]) == sorted({(q, d) for q, docs in searches for d in docs})
    assert metric("rerank_queue_searches", model=m) == 0
    await engine.close()


async def test_micro_batches_are_length_sorted_and_fit_the_token_budget() -> None:
    scorer = Overlap()
    budget = 60
    engine, m = await started(scorer, max_batch_tokens=budget, batch_size=4)
    lengths = [9, 1, 14, 3, 3, 20, 7, 2, 11, 5, 1, 16]
    docs = [words(n, f"d{i}") for i, n in enumerate(lengths)]
    await asyncio.gather(engine.score(m, "q", docs[:6], 5), engine.score(m, "q r", docs[6:], 5))
    tokens = [[len(q.split()) + len(d.split()) + PAIR_EXTRA for q, d in call] for call in scorer.calls]
    flat = [n for call in tokens for n in call]
    assert flat == sorted(flat) and len(flat) == len(docs)
    assert all(len(call) <= 4 and len(call) * max(call) <= budget for call in tokens)
    # greedy: each call stops only because the next pair would break the budget or the batch size
    for call, following in zip(tokens, tokens[1:]):
        assert len(call) == 4 or (len(call) + 1) * following[0] > budget
    assert metric("rerank_batch_pairs_count", model=m) == len(scorer.calls)
    real = metric("rerank_batch_tokens_total", model=m, kind="real")
    padding = metric("rerank_batch_tokens_total", model=m, kind="padding")
    assert real == sum(flat) and padding == sum(len(c) * max(c) - sum(c) for c in tokens)
    await engine.close()


async def test_a_pair_longer_than_the_budget_is_scored_alone() -> None:
    scorer = Overlap()
    engine, m = await started(scorer, max_batch_tokens=10)
    assert await engine.score(m, "q", ["q " + words(30), "q"], 5) == [1.0, 1.0]
    assert [len(call) for call in scorer.calls] == [1, 1]
    await engine.close()


async def test_deadline_after_some_pairs_returns_partial_scores_with_none() -> None:
    scorer = Overlap()
    engine, m = await started(scorer, batch_size=2)
    docs = ["a", "a b", "a b c", "a b c d"]  # two micro-batches of two, shortest first

    def hold_second_call(original=scorer.score_pairs):
        def score_pairs(queries, docs):
            if scorer.calls:
                scorer.hold()
            return original(queries, docs)
        return score_pairs

    scorer.score_pairs = hold_second_call()  # type: ignore[method-assign]
    try:
        assert await engine.score(m, "a b c d", docs, 0.5) == [1.0, 2.0, None, None]
    finally:
        scorer.release()
    await engine.close()


async def test_deadline_with_nothing_scored_raises_timeout() -> None:
    scorer = Overlap()
    engine, m = await started(scorer)
    scorer.hold()
    try:
        with pytest.raises(TimeoutError):
            await engine.score(m, "q", ["q", "r"], 0.1)
    finally:
        scorer.release()
    await engine.close()


async def test_full_queue_raises_overloaded_at_once_without_reaching_the_model() -> None:
    scorer = Overlap()
    engine, m = await started(scorer, max_queue=1)
    scorer.hold()
    busy = asyncio.create_task(engine.score(m, "q", ["q"], 10))
    await scorer.busy()
    rejected = metric("rerank_rejected_total", model=m, reason="queue-full")
    with pytest.raises(Overloaded):
        await asyncio.wait_for(engine.score(m, "other", ["other doc"], 10), 1)
    assert metric("rerank_rejected_total", model=m, reason="queue-full") == rejected + 1
    scorer.release()
    assert await busy == [1.0]
    assert scorer.calls == [[("q", "q")]]
    assert await engine.score(m, "other", ["other doc"], 10) == [1.0]  # room again once the first is done
    await engine.close()


async def test_score_cache_hit_skips_the_backend_and_paging_scores_only_new_documents() -> None:
    scorer = Overlap()
    engine, m = await started(scorer)
    window = ["alpha beta", "beta", "gamma"]
    first = await engine.score(m, "alpha beta", window, 5)
    assert await engine.score(m, "alpha beta", window, 5) == first
    assert len(scorer.calls) == 1
    assert metric("rerank_score_cache_total", model=m, result="hit") == 3
    # the next page: the window grew by one document; only that one reaches the model
    assert await engine.score(m, "alpha beta", [*window, "alpha"], 5) == [*first, 1.0]
    assert scorer.calls[1:] == [[("alpha beta", "alpha")]]
    # another query over the same documents is another pair
    await engine.score(m, "gamma", window, 5)
    assert len(scorer.calls) == 3
    await engine.close()


async def test_zero_score_cache_entries_turns_the_cache_off() -> None:
    scorer = Overlap()
    engine, m = await started(scorer, score_cache_entries=0)
    await engine.score(m, "q", ["q"], 5)
    await engine.score(m, "q", ["q"], 5)
    assert len(scorer.calls) == 2
    await engine.close()


async def test_a_caller_that_gave_up_does_not_block_others_and_its_pairs_are_skipped() -> None:
    scorer = Overlap()
    engine, m = await started(scorer, batch_size=1)
    dropped = metric("rerank_pairs_dropped_total", model=m, reason="deadline")
    scorer.hold()
    given_up = asyncio.create_task(engine.score(m, "slow", ["slow 1", "slow 2", "slow 3"], 0.5))
    await scorer.busy()
    other = asyncio.create_task(engine.score(m, "fast", ["fast doc"], 10))
    with pytest.raises(TimeoutError):
        await given_up  # its first pair is still in the model: nothing scored by the deadline
    scorer.release()
    assert await other == [1.0]
    assert [call[0][0] for call in scorer.calls] == ["slow", "fast"]
    assert metric("rerank_pairs_dropped_total", model=m, reason="deadline") == dropped + 2
    await engine.close()


async def test_a_cancelled_caller_leaves_the_queue() -> None:
    scorer = Overlap()
    engine, m = await started(scorer, max_queue=2)
    scorer.hold()
    busy = asyncio.create_task(engine.score(m, "busy", ["busy"], 10))
    await scorer.busy()
    leaving = asyncio.create_task(engine.score(m, "leaving", ["leaving"], 10))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    scorer.release()
    assert await busy == [1.0]
    assert await engine.score(m, "next", ["next"], 10) == [1.0]
    assert [call[0][0] for call in scorer.calls] == ["busy", "next"]
    await engine.close()


async def test_earliest_deadline_goes_first_when_searches_queue_up() -> None:
    scorer = Overlap()
    # a round holds about ROUND_BATCHES budgets of tokens: each search below fills one on its own
    budget = 40
    engine, m = await started(scorer, max_batch_tokens=budget)
    big = [words(budget * ROUND_BATCHES // 2 - PAIR_EXTRA - 1, word) for word in ("x", "y")]
    scorer.hold()
    busy = asyncio.create_task(engine.score(m, "busy", ["busy"], 30))
    await scorer.busy()
    late = asyncio.create_task(engine.score(m, "late", [f"late {d}" for d in big], 30))
    soon = asyncio.create_task(engine.score(m, "soon", [f"soon {d}" for d in big], 20))
    await asyncio.sleep(0)
    scorer.release()
    await asyncio.gather(busy, late, soon)
    assert [call[0][0] for call in scorer.calls] == ["busy", "soon", "soon", "late", "late"]
    await engine.close()


async def test_model_error_fails_that_batch_and_the_engine_keeps_serving() -> None:
    scorer = Overlap()
    engine, m = await started(scorer)
    scorer.fail_on = {"boom"}
    with pytest.raises(RuntimeError, match="blew up"):
        await engine.score(m, "boom", ["boom"], 5)
    assert await engine.score(m, "fine", ["fine"], 5) == [1.0]
    assert metric("rerank_model_errors_total", model=m) == 1
    await engine.close()


async def test_a_backend_that_cannot_count_fails_those_searches_and_the_engine_keeps_serving() -> None:
    scorer = Overlap()
    engine, m = await started(scorer)
    count = scorer.count_tokens

    def broken(texts: Sequence[str]) -> list[int]:
        if "boom" in texts:
            raise RuntimeError("tokenizer blew up")
        return count(texts)

    scorer.count_tokens = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="tokenizer blew up"):
        await engine.score(m, "boom", ["doc"], 5)
    assert await engine.score(m, "fine", ["fine"], 5) == [1.0]
    assert metric("rerank_model_errors_total", model=m) == 1
    await engine.close()


async def test_backend_without_score_pairs_is_called_once_per_query_of_the_batch() -> None:
    scorer = ScoreOnly()
    engine, m = await started(scorer)
    results = await asyncio.gather(engine.score(m, "a b", ["a", "b c", "a b"], 5), engine.score(m, "c", ["b c"], 5))
    assert results == [[1.0, 1.0, 2.0], [1.0]]
    assert sorted(q for q, _ in scorer.calls) == ["a b", "c"]
    await engine.close()


async def test_model_load_failure_is_unavailable_with_the_reason_in_states() -> None:
    def broken(name: str, spec: ModelSpec) -> Overlap:
        raise ModelLoadError("model 'x': no such model folder")

    engine = ScoringEngine({"x": CrossEncoderSpec(source="x")}, loader=broken)
    await engine.start()
    # retried after load_retry_s (1 s by default, a little jitter): the state says when
    assert engine.states() == {"x": "error: ModelLoadError: model 'x': no such model folder (retrying in 1s)"}
    assert not engine.loaded and not engine.ready
    with pytest.raises(ModelLoading, match="no such model folder"):
        await engine.score("x", "q", ["d"], 5)
    with pytest.raises(ModelUnavailable):
        await engine.score("unknown", "q", ["d"], 5)
    await engine.close()


async def test_unloading_a_model_fails_its_waiting_searches_as_unavailable() -> None:
    scorer = Overlap()
    engine, m = await started(scorer)
    scorer.hold()
    waiting = asyncio.create_task(engine.score(m, "q", ["q"], 10))
    await scorer.busy()
    await engine.close()
    scorer.release()
    with pytest.raises(ModelUnavailable):
        await waiting
    with pytest.raises(ModelUnavailable):
        await engine.score(m, "q", ["q"], 1)


async def test_plain_model_spec_gets_the_engine_defaults() -> None:
    scorer = Overlap()
    engine = ScoringEngine({"m": CrossEncoderSpec(source="t")}, loader=lambda n, s: scorer)
    await engine.start()
    assert engine.states() == {"m": "ready"}
    assert await engine.score("m", "q", ["q", "r"], 5) == [1.0, 0.0]
    assert await engine.score("m", "q", [], 5) == []
    await engine.close()


# ---- real models --------------------------------------------------------------------------------------------------
QUERIES = ["vitamin C deficiency causes scurvy", "smoking increases the risk of lung cancer"]
DOCS = [
    "Scurvy results from a prolonged lack of ascorbic acid in the diet.",
    "Cigarette smoke contains carcinogens that damage the DNA of airway epithelial cells.",
    "Lung adenocarcinoma incidence is higher among long-term smokers than never smokers.",
    "Collagen synthesis requires ascorbate as a cofactor for prolyl hydroxylase.",
    "Regular aerobic exercise lowers resting blood pressure.",
    "Quitting smoking before age forty avoids most of the excess mortality of smoking.",
]


class PadOnly:
    """A model thread's tokenizer that may pad but not tokenize: under the engine, pairs come tokenized."""

    def __init__(self, tokenizer: object) -> None:
        self._tokenizer = tokenizer

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the model thread tokenized text")

    def __getattr__(self, name: str) -> object:
        return getattr(self._tokenizer, name)


async def engine_matches_direct_scores(spec: ModelSpec) -> None:
    from rerank.registry import load_scorer

    direct = load_scorer("direct", spec)
    engine = ScoringEngine({"m": spec})
    await engine.start()
    assert engine.states() == {"m": "ready"}
    loaded = engine._workers["m"].scorer
    loaded.tokenizer = PadOnly(loaded.tokenizer)  # type: ignore[union-attr]
    # both searches arrive together, so their pairs share micro-batches
    results = await asyncio.gather(*(engine.score("m", q, DOCS, 60) for q in QUERIES))
    for query, scores in zip(QUERIES, results):
        assert scores == pytest.approx(direct.score(query, DOCS), abs=1e-5)
    await engine.close()


async def test_engine_scores_equal_direct_scores_with_minilm_bi_encoder() -> None:
    from rerank_proxy_tools.models import MINILM_SOURCE

    await engine_matches_direct_scores(BiEncoderSpec(source=MINILM_SOURCE, batch_size=4))


async def test_engine_scores_equal_direct_scores_with_a_cross_encoder(tmp_path: Path) -> None:
    from rerank_proxy_tools.models import make_tiny_cross_encoder

    folder = make_tiny_cross_encoder(tmp_path / "ce")
    await engine_matches_direct_scores(CrossEncoderSpec(source=str(folder), batch_size=4))


async def test_engine_scores_equal_direct_scores_with_mxbai_v2(tmp_path: Path) -> None:
    from rerank_proxy_tools.qwen import make_tiny_qwen2

    make_tiny_qwen2(tmp_path / "qwen")
    await engine_matches_direct_scores(MxbaiV2Spec(source=str(tmp_path / "qwen"), batch_size=4))


async def test_micro_batches_follow_the_call_budget_the_backend_reports() -> None:
    scorer = Overlap()
    scorer.max_batch_tokens = 12  # type: ignore[attr-defined]  # what a local backend sets from its device
    engine, m = await started(scorer)
    await engine.score(m, "q", [words(3, f"d{i}") for i in range(6)], 5)  # 7 tokens per pair: one pair per call
    assert [len(call) for call in scorer.calls] == [1] * 6
    await engine.close()


async def test_micro_batches_follow_the_pair_count_the_backend_reports() -> None:
    scorer = Overlap()
    scorer.batch_size = 2  # type: ignore[attr-defined]  # what a local backend sets from its device
    engine, m = await started(scorer)
    await engine.score(m, "q", [words(3, f"d{i}") for i in range(6)], 5)
    assert [len(call) for call in scorer.calls] == [2] * 3
    await engine.close()


# ---- what a deadline leaves scored: the top of the window -----------------------------------------------------------
def pace(worker: object, seconds_per_token: float) -> None:
    """Fix the model's pace for a test: one huge call that the few real ones the test makes cannot move."""
    worker.pace = Pace()  # type: ignore[attr-defined]
    worker.pace.observe(10**12, seconds_per_token * 10**12)  # type: ignore[attr-defined]


def slow(worker: object) -> None:
    """100 s a token: no round has time to spare, and a call near a deadline fits one pair only."""
    pace(worker, 100.0)


def fast(worker: object) -> None:
    """A nanosecond a token: every round has time to spare (shortest first)."""
    pace(worker, 1e-9)


def hold_from_call(scorer: Overlap, n: int) -> None:
    """The backend's `n`-th call (1 = the first) and every later one block until `release`."""
    original = scorer.score_pairs

    def score_pairs(queries: Sequence[str], docs: Sequence[str]) -> list[float]:
        if len(scorer.calls) + 1 >= n:
            scorer.hold()
        return original(queries, docs)

    scorer.score_pairs = score_pairs  # type: ignore[method-assign]


def docs_of(calls: list[list[tuple[str, str]]]) -> list[list[str]]:
    return [[doc for _, doc in call] for call in calls]


# The cluster's order puts the longest documents first: shortest first would score the bottom of the window first.
LONGEST_FIRST = [words(n, f"d{i}") for i, n in enumerate([9, 8, 7, 6, 2, 1])]


async def test_a_search_short_of_time_is_scored_in_rank_order_and_its_partial_scores_are_the_top() -> None:
    scorer = Overlap()
    engine, m = await started(scorer, batch_size=2)
    slow(engine._workers[m])
    hold_from_call(scorer, 3)
    try:
        scores = await engine.score(m, "d0 d1 d2 d3 d4 d5", LONGEST_FIRST, 0.5)
    finally:
        scorer.release()
    assert scores == [1.0, 1.0, None, None, None, None]  # ranks 0 and 1, not the two shortest documents
    assert docs_of(scorer.calls) == [[LONGEST_FIRST[0]], [LONGEST_FIRST[1]], [LONGEST_FIRST[2]]]
    await engine.close()


async def test_a_search_short_of_time_is_cut_rank_first_within_the_token_budget() -> None:
    scorer = Overlap()
    budget = 60
    engine, m = await started(scorer, max_batch_tokens=budget, batch_size=4)
    # 0.1 s a token and 7 s: a call of 60 tokens fits before the deadline, the last pair alone (49 tokens) not
    # 1.5 times over, so the whole round goes rank first in calls of the full budget
    pace(engine._workers[m], 0.1)
    lengths = [9, 1, 14, 3, 3, 20, 7, 2, 11, 5, 1, 45]
    docs = [words(n, f"d{i}") for i, n in enumerate(lengths)]
    await engine.score(m, "q", docs, 7)
    rank_of = {doc: i for i, doc in enumerate(docs)}
    ranks = [[rank_of[d] for d in call] for call in docs_of(scorer.calls)]
    assert sorted(r for call in ranks for r in call) == list(range(len(docs)))
    assert all(max(a) < min(b) for a, b in zip(ranks, ranks[1:]))  # every call after the one before, in rank
    tokens = [[lengths[r] + 1 + PAIR_EXTRA for r in call] for call in ranks]
    assert all(call == sorted(call) and len(call) <= 4 and len(call) * max(call) <= budget for call in tokens)
    for call, following in zip(ranks, ranks[1:]):  # greedy: a call ends only when the next rank breaks a limit
        longest = max(lengths[r] for r in [*call, min(following)]) + 1 + PAIR_EXTRA
        assert len(call) == 4 or (len(call) + 1) * longest > budget
    await engine.close()


async def test_searches_short_of_time_in_one_round_share_their_top_ranks_first() -> None:
    scorer = Overlap()
    engine, m = await started(scorer)
    scorer.hold()
    busy = asyncio.create_task(engine.score(m, "busy", ["busy"], 10))
    await scorer.busy()
    first = asyncio.create_task(engine.score(m, "a", ["a0", "a1", "shared", "a3"], 10))
    second = asyncio.create_task(engine.score(m, "a", ["shared", "b1", "b2"], 10))
    await asyncio.sleep(0)  # let them queue behind the busy call: one round
    slow(engine._workers[m])  # one pair a call
    scorer.release()
    await asyncio.gather(busy, first, second)
    # rank 0 of both first (the shared pair, rank 2 of the first search, goes at the second's rank 0), then rank 1,
    # then rank 2 (the second's; the first's is the shared pair, scored) and rank 3
    assert docs_of(scorer.calls[1:]) == [["a0"], ["shared"], ["a1"], ["b1"], ["b2"], ["a3"]]
    assert await first == [0.0, 0.0, 0.0, 0.0] and await second == [0.0, 0.0, 0.0]
    await engine.close()


async def test_a_search_with_time_to_spare_is_scored_shortest_first() -> None:
    scorer = Overlap()
    engine, m = await started(scorer, batch_size=2)
    fast(engine._workers[m])
    assert await engine.score(m, "d0 d4 d5", LONGEST_FIRST, 5) == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert docs_of(scorer.calls) == [LONGEST_FIRST[:3:-1], LONGEST_FIRST[3:1:-1], LONGEST_FIRST[1::-1]]
    await engine.close()


async def test_a_round_that_runs_short_of_time_goes_rank_first_and_keeps_what_it_scored() -> None:
    scorer = Overlap()
    engine, m = await started(scorer, batch_size=2)
    worker = engine._workers[m]
    fast(worker)
    scorer.hold()  # the first call (shortest first: the two shortest, ranks 4 and 5) waits for the test
    hold_from_call(scorer, 2)  # and so does every later one, until the deadline
    search = asyncio.create_task(engine.score(m, "d0 d1 d2 d3 d4 d5", LONGEST_FIRST, 0.5))
    try:
        await scorer.busy()
        assert docs_of(scorer.calls) == [[LONGEST_FIRST[5], LONGEST_FIRST[4]]]
        slow(worker)  # the model turned out slow: no more time to spare
        scorer.release()
        scores = await search
    finally:
        scorer.release()
    # then rank first: rank 0 in the call the deadline cut, so only the two shortest came back (the prefix the proxy
    # reorders is empty: rank 0 is unscored), and nothing scored shortest first was lost
    assert docs_of(scorer.calls)[1] == [LONGEST_FIRST[0]]
    assert scores == [None, None, None, None, 1.0, 1.0]
    await engine.close()


def test_the_pace_weighs_calls_by_their_size_and_fades_old_ones() -> None:
    pace = Pace()
    assert pace.seconds_per_token is None and pace.seconds(100) is None
    pace.observe(4, 0.04)  # a warm-up call: all overhead, 10 ms a token
    pace.observe(2048, 0.8)  # a real call: 0.4 ms a token
    assert pace.seconds_per_token == pytest.approx((0.7 * 0.04 + 0.8) / (0.7 * 4 + 2048))
    assert pace.seconds(1000) == pytest.approx(1000 * pace.seconds_per_token)
    pace.observe(0, 5.0)  # a call of cached documents only: nothing to learn
    assert pace.seconds_per_token == pytest.approx((0.7 * 0.04 + 0.8) / (0.7 * 4 + 2048))
