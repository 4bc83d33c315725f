"""The engine's queue decisions as pure functions (rerank/scheduling.py): admission, earliest-deadline order,
duplicate pairs, the gathering window and batch cutting. No event loop, no clock, no threads: "now" is a number."""
from __future__ import annotations

from collections import deque

import pytest

from rerank.scheduling import (
    TIME_TO_SPARE,
    Pair,
    Round,
    Search,
    Wanted,
    admit,
    choose_order,
    cut_batch,
    gathered,
    merge_pairs,
    next_batch,
    split_unwanted,
    take_round,
    take_within,
    unwanted,
)


def search(seq: int, deadline: float = 100.0, tokens: list[int] | None = None, over: str | None = None) -> Search:
    return Search(seq, deadline, tokens or [], over)


def pair(name: str, tokens: int, *targets: tuple[Search, int]) -> Pair:
    """A pair wanted by `targets` (search, rank), as merge_pairs makes it."""
    return merge_pairs(Wanted(s, rank, "q", name, name, tokens, None) for s, rank in targets)[0]


def names(pairs: list[Pair]) -> list[str]:
    return [p.doc for p in pairs]


# ---- admission ------------------------------------------------------------------------------------------------------
def test_a_queue_below_its_bound_admits_and_a_full_one_refuses_the_newcomer() -> None:
    assert admit(0, 1) is None
    assert admit(255, 256) is None
    assert admit(256, 256) == "queue-full"
    assert admit(300, 256) == "queue-full"  # never more room by being further over


# ---- budgets ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("sizes", "budget", "taken"), [
    ([], 10, 0),
    ([3, 5, 1], 9, 3),
    ([3, 5, 1], 8, 2),
    ([3, 5, 1], 5, 1),  # stops at the first that does not fit: the 1 after the 5 does not jump the line
    ([30, 1], 10, 1),  # a first item over the budget goes alone
    ([4, 4, 4], 8, 2),  # exactly the budget fits
])
def test_take_within_takes_a_prefix_that_fits_and_at_least_one(sizes: list[int], budget: int, taken: int) -> None:
    assert take_within(sizes, budget) == taken


# ---- who is still wanted ---------------------------------------------------------------------------------------------
def test_a_search_is_unwanted_once_over_or_at_its_deadline() -> None:
    assert unwanted(search(0, deadline=10), now=9.999) is None
    assert unwanted(search(0, deadline=10), now=10) == "deadline"
    assert unwanted(search(0, deadline=10, over="abandoned"), now=0) == "abandoned"
    assert unwanted(search(0, deadline=10, over="done"), now=20) == "done"  # its own reason first


def test_split_unwanted_keeps_order_and_says_why() -> None:
    a, b, c, d = search(0, 10), search(1, 5), search(2, 10, over="error"), search(3, 20)
    live, gone = split_unwanted([a, b, c, d], now=6)
    assert live == [a, d]
    assert gone == [(b, "deadline"), (c, "error")]


# ---- gathering ------------------------------------------------------------------------------------------------------
def test_a_round_gathers_until_a_batch_worth_waits_or_the_window_is_over() -> None:
    assert not gathered(queued_tokens=10, max_batch_tokens=100, now=1.0, window_ends=1.002)
    assert gathered(queued_tokens=100, max_batch_tokens=100, now=1.0, window_ends=1.002)
    assert gathered(queued_tokens=10, max_batch_tokens=100, now=1.002, window_ends=1.002)
    assert gathered(queued_tokens=0, max_batch_tokens=100, now=1.0, window_ends=1.0)  # max_wait 0: at once


# ---- rounds: earliest deadline first --------------------------------------------------------------------------------
def test_a_round_takes_the_earliest_deadlines_first_within_its_budget() -> None:
    late = search(0, deadline=30, tokens=[50, 50])
    soon = search(1, deadline=20, tokens=[50, 50])
    sooner_tie = search(2, deadline=20, tokens=[10])  # same deadline as `soon`, later arrival
    taken, rest = take_round([late, soon, sooner_tie], budget=110)
    assert taken == [soon, sooner_tie] and rest == [late]
    taken, rest = take_round([late, soon], budget=50)  # over budget alone: still taken, by itself
    assert taken == [soon] and rest == [late]
    assert take_round([], budget=50) == ([], [])


# ---- duplicate pairs --------------------------------------------------------------------------------------------------
def test_the_same_pair_in_two_searches_is_one_pair_at_its_most_urgent_place() -> None:
    first, second = search(0, deadline=10), search(1, deadline=5)
    wanted = [
        Wanted(first, 0, "q", "a0", "key-a0", 4, None),
        Wanted(first, 2, "q", "shared", "key-shared", 6, None),
        Wanted(second, 0, "q", "shared", "key-shared", 6, None),
        Wanted(second, 1, "q", "b1", "key-b1", 5, None),
    ]
    pairs = merge_pairs(wanted)
    assert names(pairs) == ["a0", "shared", "b1"]  # first wanted first
    shared = pairs[1]
    assert shared.targets == [(first, 2), (second, 0)]
    assert shared.order == (0, 5, 1)  # the second's rank 0 beats the first's rank 2
    assert pairs[0].order == (0, 10, 0)
    # rank first: rank 0 of both (the earlier deadline first), then rank 1
    work = Round.of([first, second], pairs, batch_size=8, max_batch_tokens=100)
    assert names(list(work.by_rank)) == ["shared", "a0", "b1"]


def test_equal_ranks_go_earliest_deadline_then_arrival_first() -> None:
    a, b, c = search(0, deadline=9), search(1, deadline=5), search(2, deadline=9)
    pairs = merge_pairs(Wanted(s, 0, "q", name, name, 3, None) for s, name in ((a, "a"), (b, "b"), (c, "c")))
    assert names(list(Round.of([a, b, c], pairs, 8, 100).by_rank)) == ["b", "a", "c"]


# ---- rounds ------------------------------------------------------------------------------------------------------------
def test_a_round_knows_its_tokens_padding_and_time_left() -> None:
    s, gone = search(0, deadline=10), search(1, deadline=2, over="abandoned")
    pairs = [pair("x", 2, (s, 0)), pair("y", 4, (s, 1)), pair("z", 4, (gone, 0))]
    work = Round.of([s, gone], pairs, batch_size=2, max_batch_tokens=100)
    assert names(list(work.by_length)) == ["x", "y", "z"]
    assert work.left == 10
    # shortest first in calls of 2: [2, 4] and [4] = 8 + 4 padded tokens for 10 real ones
    assert work.padding == pytest.approx(12 / 10)
    assert work.time_left(now=4) == 6  # the abandoned search's earlier deadline does not count
    s.over = "done"
    assert work.time_left(now=4) is None
    assert Round.of([], [], 2, 100).padding == 1.0


# ---- which order, how big a call -------------------------------------------------------------------------------------
def test_a_round_with_time_to_spare_goes_shortest_first_in_full_calls() -> None:
    # 1000 tokens left, padding 1.2, 1 ms a token: 1.2 s of work, TIME_TO_SPARE times that is 1.8 s
    assert choose_order(0.001, 1.8, 1000, 1.2, 256) == ("shortest", 256)
    assert choose_order(0.001, 60.0, 1000, 1.2, 256) == ("shortest", 256)
    assert TIME_TO_SPARE * 0.001 * 1000 * 1.2 == pytest.approx(1.8)


def test_a_round_short_of_time_goes_rank_first_in_calls_the_deadline_fits() -> None:
    assert choose_order(0.001, 1.7, 1000, 1.2, 256) == ("rank", 256)  # 1700 tokens fit: the full budget
    assert choose_order(0.001, 0.1, 1000, 1.2, 256) == ("rank", 100)  # 100 tokens fit before the deadline
    assert choose_order(0.001, 0.0001, 1000, 1.2, 256) == ("rank", 1)  # less than a token: one pair still goes
    assert choose_order(0.001, -1.0, 1000, 1.2, 256) == ("rank", 1)  # past it (no caller left yet)


def test_with_no_pace_yet_a_round_goes_rank_first_and_with_no_deadline_shortest_first() -> None:
    assert choose_order(None, 10.0, 1000, 1.0, 256) == ("rank", 256)
    assert choose_order(0.001, None, 1000, 1.0, 256) == ("shortest", 256)
    assert choose_order(0.0, -1.0, 1000, 1.0, 256) == ("rank", 256)  # a zero pace fits anything


# ---- cutting a micro-batch ----------------------------------------------------------------------------------------------
def test_a_batch_is_cut_greedily_within_the_budget_and_the_count_and_sent_shortest_first() -> None:
    s = search(0)
    queue = deque([pair("a", 9, (s, 0)), pair("b", 3, (s, 1)), pair("c", 10, (s, 2)), pair("d", 1, (s, 3))])
    batch, dropped = cut_batch(queue, batch_size=8, budget=30, now=0)
    # a (9), b (longest 9: 2 x 9 = 18), c (longest 10: 3 x 10 = 30), d would make 4 x 10 = 40 > 30
    assert names(batch) == ["b", "a", "c"] and dropped == []
    assert names(list(queue)) == ["d"] and all(p.taken for p in batch)
    batch, _ = cut_batch(queue, batch_size=8, budget=30, now=0)
    assert names(batch) == ["d"] and not queue
    queue = deque([pair(name, 1, (s, i)) for i, name in enumerate("abc")])
    assert names(cut_batch(queue, batch_size=2, budget=100, now=0)[0]) == ["a", "b"]  # the count caps it


def test_a_pair_over_the_budget_goes_alone() -> None:
    s = search(0)
    queue = deque([pair("huge", 50, (s, 0)), pair("small", 1, (s, 1))])
    assert names(cut_batch(queue, batch_size=8, budget=10, now=0)[0]) == ["huge"]
    assert names(cut_batch(queue, batch_size=8, budget=10, now=0)[0]) == ["small"]


def test_pairs_nobody_wants_are_dropped_and_pairs_taken_elsewhere_passed_over() -> None:
    alive, left, late = search(0, deadline=10), search(1, deadline=10, over="abandoned"), search(2, deadline=3)
    taken = pair("taken", 1, (alive, 0))
    taken.taken = True  # batched off the round's other order
    queue = deque([
        taken,
        pair("left", 2, (left, 0)),
        pair("late", 2, (late, 0)),
        pair("shared", 2, (left, 1), (alive, 1)),  # one search still wants it
        pair("both-gone", 2, (late, 1), (left, 2)),
    ])
    batch, dropped = cut_batch(queue, batch_size=8, budget=100, now=5)
    assert names(batch) == ["shared"]
    assert [(p.doc, reason) for p, reason in dropped] == [("left", "abandoned"), ("late", "deadline"),
                                                         ("both-gone", "deadline")]
    assert not queue


def test_a_round_switches_to_rank_first_and_skips_what_it_scored_shortest_first() -> None:
    s = search(0, deadline=100)
    # the cluster's order puts the longest documents first
    pairs = [pair(f"d{rank}", tokens, (s, rank)) for rank, tokens in enumerate([9, 8, 7, 6, 2, 1])]
    work = Round.of([s], pairs, batch_size=2, max_batch_tokens=100)
    fast, slow = 1e-9, 100.0
    batch, _ = next_batch(work, fast, now=0, batch_size=2, max_batch_tokens=100)
    assert names(batch) == ["d5", "d4"] and work.left == 30
    # now slow: one pair a call (what the pace fits before the deadline), in rank order
    for expected in ("d0", "d1", "d2", "d3"):
        batch, _ = next_batch(work, slow, now=0, batch_size=2, max_batch_tokens=100)
        assert names(batch) == [expected]
    assert next_batch(work, slow, now=0, batch_size=2, max_batch_tokens=100) == ([], [])
    assert work.left == 0


def test_dropped_pairs_leave_the_rounds_tokens_too() -> None:
    keep, gone = search(0, deadline=100), search(1, deadline=100, over="abandoned")
    work = Round.of([keep, gone], [pair("k", 3, (keep, 0)), pair("g", 5, (gone, 0))], batch_size=8,
                    max_batch_tokens=100)
    batch, dropped = next_batch(work, None, now=0, batch_size=8, max_batch_tokens=100)
    assert names(batch) == ["k"] and [(p.doc, r) for p, r in dropped] == [("g", "abandoned")]
    assert work.left == 0
