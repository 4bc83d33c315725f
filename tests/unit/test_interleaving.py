"""Team-draft and balanced interleaving: the properties that make them fair, determinism for a seed, stable pages,
and click attribution on hand-built cases."""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.interleaving import (
    BalancedInterleaving,
    Credit,
    Method,
    Outcome,
    Team,
    TeamDraftInterleaving,
    balanced,
    interleave,
    search_seed,
    team_draft,
)

PROPERTY = settings(max_examples=200, deadline=None, database=None)

ids = st.lists(st.integers(0, 24), unique=True, max_size=16)
# Both rankings of one window (the proxy's case), or any two rankings (other members, other lengths).
same_window = ids.flatmap(lambda window: st.tuples(st.permutations(window), st.permutations(window)))
rankings = st.one_of(same_window, st.tuples(ids, ids))
seeds = st.integers(0, 2**64 - 1)
lengths = st.none() | st.integers(0, 40)


def expected_length(a, b, length):
    union = len(set(a) | set(b))
    return union if length is None else min(length, union)


def is_subsequence(part, whole):
    rest = iter(whole)
    return all(doc in rest for doc in part)


# ---- team-draft properties ----------------------------------------------------------------------------------------

@PROPERTY
@given(rankings, seeds, lengths)
def test_team_draft_never_repeats_a_document_and_serves_min_of_length_and_union(pair, seed, length):
    a, b = pair
    merged = team_draft(a, b, seed=seed, length=length)
    assert len(set(merged.docs)) == len(merged.docs) == len(merged.teams) == expected_length(a, b, length)
    assert set(merged.docs) <= set(a) | set(b)


@PROPERTY
@given(rankings, seeds)
def test_each_team_picks_its_own_best_remaining_document_so_keeps_its_order(pair, seed):
    a, b = pair
    merged = team_draft(a, b, seed=seed)
    for team, ranking in ((Team.A, a), (Team.B, b)):
        picks = [doc for doc, picker in zip(merged.docs, merged.teams) if picker is team]
        assert is_subsequence(picks, ranking)
    for i, (doc, team) in enumerate(zip(merged.docs, merged.teams)):
        own = a if team is Team.A else b
        assert doc == next(d for d in own if d not in merged.docs[:i])


@PROPERTY
@given(rankings, seeds)
def test_team_sizes_differ_by_at_most_one_while_both_rankings_have_unpicked_documents(pair, seed):
    a, b = pair
    merged = team_draft(a, b, seed=seed)
    sizes = Counter[Team]()
    for i, team in enumerate(merged.teams):
        taken = set(merged.docs[:i])
        if set(a) <= taken or set(b) <= taken:
            break  # one side has run out; the other fills the rest
        sizes[team] += 1
        assert abs(sizes[Team.A] - sizes[Team.B]) <= 1


# ---- balanced properties ------------------------------------------------------------------------------------------

@PROPERTY
@given(rankings, seeds, lengths)
def test_balanced_never_repeats_a_document_and_serves_min_of_length_and_union(pair, seed, length):
    a, b = pair
    merged = balanced(a, b, seed=seed, length=length)
    assert len(set(merged.docs)) == len(merged.docs) == expected_length(a, b, length)
    assert merged.ranks_a == tuple(a.index(d) + 1 if d in a else None for d in merged.docs)
    assert merged.ranks_b == tuple(b.index(d) + 1 if d in b else None for d in merged.docs)


@PROPERTY
@given(rankings, seeds)
def test_every_balanced_prefix_is_the_union_of_top_k_of_a_and_b_at_depths_one_apart(pair, seed):
    a, b = pair
    merged = balanced(a, b, seed=seed)
    for i in range(len(merged.docs) + 1):
        prefix = set(merged.docs[:i])
        assert any(prefix == set(a[:ka]) | set(b[:kb])
                   for ka in range(len(a) + 1) for kb in range(len(b) + 1)
                   if abs(ka - kb) <= 1 or ka == len(a) or kb == len(b)), i


# ---- determinism and paging ---------------------------------------------------------------------------------------

@PROPERTY
@given(rankings, seeds, st.sampled_from(Method), st.integers(0, 40))
def test_same_seed_same_list_and_a_shorter_list_is_a_prefix_of_the_window(pair, seed, method, length):
    a, b = pair
    window = interleave(method, a, b, seed=seed)
    assert interleave(method, list(a), list(b), seed=seed) == window
    assert interleave(method, a, b, seed=seed, length=length) == window.page(0, length)


@PROPERTY
@given(rankings, seeds, st.sampled_from(Method), st.integers(0, 20), st.integers(0, 20))
def test_pages_are_slices_of_the_window_that_never_overlap(pair, seed, method, start, size):
    a, b = pair
    window = interleave(method, a, b, seed=seed)
    page = window.page(start, size)
    assert page.docs == window.docs[start:start + size]
    following = window.page(start + size, size)
    assert not set(page.docs) & set(following.docs)


def test_the_seed_is_a_stable_hash_of_the_search_id_and_pins_the_merged_list():
    # Pinned values: a proxy on another Python version must rebuild the same list for page 2.
    assert search_seed("search-1") == 3711598521035355067
    assert search_seed("search-1") != search_seed("search-2")
    a, b = list("abcdefgh"), list("hgfedcba")
    merged = team_draft(a, b, seed=search_seed("search-1"))
    assert "".join(merged.docs) == "hagbcfed"
    assert "".join(merged.teams) == "babaabba"
    assert "".join(balanced(a, b, seed=search_seed("search-1")).docs) == "hagbfced"


def test_different_seeds_give_different_lists():
    a, b = list(range(10)), list(reversed(range(10)))
    assert len({team_draft(a, b, seed=seed) for seed in range(50)}) > 10
    assert {balanced(a, b, seed=seed).a_first for seed in range(50)} == {True, False}


def test_interleave_dispatches_on_the_method():
    assert isinstance(interleave(Method.TEAM_DRAFT, [1], [1], seed=0), TeamDraftInterleaving)
    assert isinstance(interleave(Method("balanced"), [1], [1], seed=0), BalancedInterleaving)
    with pytest.raises(ValueError, match="known: team-draft, balanced"):
        interleave("probabilistic", [1], [1], seed=0)  # type: ignore[arg-type]


def test_document_ids_can_be_index_and_id_pairs():
    a = [("books", "1"), ("films", "1")]
    merged = team_draft(a, a[::-1], seed=7)
    assert set(merged.docs) == set(a)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="ranking A repeats"):
        team_draft([1, 1], [1], seed=0)
    with pytest.raises(ValueError, match="ranking B repeats"):
        balanced([1], [2, 2], seed=0)
    with pytest.raises(ValueError, match="length"):
        team_draft([1], [1], seed=0, length=-1)
    with pytest.raises(ValueError, match="page"):
        balanced([1], [1], seed=0).page(-1, 10)


def test_empty_rankings_give_an_empty_list_with_no_outcome():
    assert team_draft([], [], seed=0).outcome([1]) is Outcome.NONE
    assert balanced([], [], seed=0).docs == ()


# ---- attribution: team-draft --------------------------------------------------------------------------------------

HAND_DRAFT = TeamDraftInterleaving(docs=("d1", "d2", "d3", "d4"), teams=(Team.A, Team.B, Team.B, Team.A))


@pytest.mark.parametrize(("clicked", "credit", "outcome"), [
    ([], Credit(0, 0), Outcome.NONE),
    (["unknown"], Credit(0, 0), Outcome.NONE),  # a click on a document that was not served says nothing
    (["d1"], Credit(1, 0), Outcome.A),
    (["d2", "d3"], Credit(0, 2), Outcome.B),
    (["d1", "d2"], Credit(1, 1), Outcome.TIE),
    (["d1", "d1", "d1", "d2"], Credit(1, 1), Outcome.TIE),  # repeated clicks on one document count once
    (["d2", "d3", "d4"], Credit(1, 2), Outcome.B),
    (["d1", "d2", "d3", "d4"], Credit(2, 2), Outcome.TIE),
])
def test_team_draft_credits_each_click_to_the_team_that_picked_it(clicked, credit, outcome):
    assert HAND_DRAFT.credit(clicked) == credit
    assert HAND_DRAFT.outcome(clicked) is outcome


def test_a_ranking_that_puts_the_clicked_document_first_wins_for_every_seed():
    a, b = ["rel", "x", "y", "z"], ["x", "y", "z", "rel"]
    assert {team_draft(a, b, seed=seed).outcome({"rel"}) for seed in range(200)} == {Outcome.A}
    assert {team_draft(b, a, seed=seed).outcome({"rel"}) for seed in range(200)} == {Outcome.B}


def test_identical_rankings_win_as_often_for_a_as_for_b_over_many_searches():
    ranking = [f"d{i}" for i in range(10)]
    outcomes = Counter(team_draft(ranking, ranking, seed=search_seed(f"s{i}")).outcome({"d0", "d3"})
                       for i in range(4000))
    # The coin decides who draws d0 and d3, so neither side is favoured.
    assert outcomes[Outcome.A] + outcomes[Outcome.B] + outcomes[Outcome.TIE] == 4000
    assert abs(outcomes[Outcome.A] - outcomes[Outcome.B]) < 200  # about 3 standard deviations of 2000 coin flips


# ---- attribution: balanced ----------------------------------------------------------------------------------------

A_FIRST = next(seed for seed in range(100) if balanced([1], [1], seed=seed).a_first)  # a seed whose coin says A

def test_balanced_attribution_counts_clicks_within_the_top_k_of_the_lowest_click():
    merged = balanced([1, 2, 3, 4], [2, 3, 1, 4], seed=A_FIRST)
    assert merged.docs == (1, 2, 3, 4)
    assert (merged.ranks_a, merged.ranks_b) == ((1, 2, 3, 4), (3, 1, 2, 4))
    assert merged.credit([3]) == Credit(0, 1)  # k = 2: top-2 of A is {1, 2}, of B {2, 3}
    assert merged.outcome([1]) is Outcome.A  # k = 1
    assert merged.outcome([2]) is Outcome.B  # k = 1: B ranks 2 first
    assert merged.credit([1, 3]) == Credit(1, 1)
    assert merged.outcome([1, 3]) is Outcome.TIE
    assert merged.credit([1, 2, 3, 4]) == Credit(4, 4)
    assert merged.outcome([]) is Outcome.NONE
    assert merged.outcome(["elsewhere"]) is Outcome.NONE


def test_balanced_attribution_of_a_document_only_one_ranking_holds():
    merged = balanced([1, 2], [3, 1], seed=A_FIRST)  # A first: 1, 3, 2
    assert merged.docs == (1, 3, 2)
    assert merged.ranks_a[1] is None
    assert merged.outcome([3]) is Outcome.B  # k = 1 from B's rank; A's top-1 is {1}
    assert merged.credit([2]) == Credit(1, 0)  # k = 2: only A holds 2


@PROPERTY
@given(ids, seeds, st.data())
def test_balanced_interleaving_of_identical_rankings_always_ties(ranking, seed, data):
    merged = balanced(ranking, ranking, seed=seed)
    assert merged.docs == tuple(ranking)
    clicked = data.draw(st.sets(st.sampled_from(ranking)) if ranking else st.just(set()))
    assert merged.outcome(clicked) is (Outcome.TIE if clicked else Outcome.NONE)


@PROPERTY
@given(rankings, seeds, st.data())
def test_any_click_on_a_served_document_gives_a_preference_or_a_tie(pair, seed, data):
    a, b = pair
    for merged in (team_draft(a, b, seed=seed), balanced(a, b, seed=seed)):
        if not merged.docs:
            continue
        clicked = data.draw(st.sets(st.sampled_from(merged.docs), min_size=1))
        assert merged.outcome(clicked) is not Outcome.NONE
        assert merged.page(0, len(merged.docs)).outcome(clicked) is merged.outcome(clicked)
