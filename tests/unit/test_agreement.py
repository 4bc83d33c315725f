"""Agreement between two rankings: overlap@k, Kendall's tau and rank-biased overlap on known cases."""
import random

import pytest

from proxy.agreement import agreement, kendall_tau, overlap_at, rank_biased_overlap


def test_identical_rankings_agree_fully():
    ranking = list("abcdefghijkl")
    result = agreement(ranking, list(ranking))
    assert (result.overlap_at_10, result.kendall_tau) == (1.0, 1.0) and result.rbo == pytest.approx(1.0)


def test_a_reversed_ranking_has_tau_minus_one():
    assert kendall_tau(list("abcde"), list("edcba")) == -1.0


def test_one_swapped_pair_of_four():
    assert kendall_tau(list("abcd"), list("bacd")) == pytest.approx(4 / 6)  # 5 concordant, 1 discordant of 6


def test_tau_matches_a_brute_force_count_on_random_permutations():
    rng = random.Random(5)
    for _ in range(50):
        a = list(range(30))
        b = a[:]
        rng.shuffle(b)
        pos = {d: i for i, d in enumerate(b)}
        pairs = [(i, j) for i in range(30) for j in range(i + 1, 30)]
        concordant = sum(1 if pos[a[i]] < pos[a[j]] else -1 for i, j in pairs)
        assert kendall_tau(a, b) == pytest.approx(concordant / len(pairs))


def test_tau_counts_only_the_documents_both_hold():
    assert kendall_tau(["a", "x", "b"], ["a", "b", "y"]) == 1.0
    assert kendall_tau(["a"], ["b"]) == 1.0


def test_overlap_at_k_ignores_order_within_the_top():
    assert overlap_at(list("abcxyz"), list("cbaqrs"), 3) == 1.0
    assert overlap_at(list("abcd"), list("abyz"), 4) == 0.5
    assert overlap_at([], [], 10) == 1.0


def test_rbo_of_disjoint_rankings_is_zero():
    assert rank_biased_overlap(list("abc"), list("xyz")) == 0.0


def test_rbo_weighs_the_top_more_than_the_bottom():
    base = list("abcdefghij")
    top_swapped = list("bacdefghij")
    bottom_swapped = list("abcdefghji")
    assert rank_biased_overlap(base, bottom_swapped) > rank_biased_overlap(base, top_swapped)


def test_rbo_is_symmetric_and_handles_uneven_lengths():
    a, b = list("abcdefg"), list("bdaxz")
    assert rank_biased_overlap(a, b) == pytest.approx(rank_biased_overlap(b, a))
    assert 0 < rank_biased_overlap(a, b) < 1


def test_rbo_extrapolates_a_prefix_that_agrees_so_far_to_full_agreement():
    full = list("abcdefghij")
    assert rank_biased_overlap(full, full[:5]) == pytest.approx(1.0)  # extrapolation: agreement so far continues


def test_rbo_rejects_a_persistence_outside_zero_and_one():
    with pytest.raises(ValueError):
        rank_biased_overlap(["a"], ["a"], p=1.0)
