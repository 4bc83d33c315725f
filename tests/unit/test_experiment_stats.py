"""Experiment tallies, the exact sign test and the Beta credible interval, checked against exact rational
arithmetic for small counts and the normal approximation for large ones."""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from fractions import Fraction
from statistics import NormalDist

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.experiment_stats import (
    ExperimentTally,
    interleaving_delta,
    sign_test_p_value,
    summarize,
    win_share,
)
from proxy.interleaving import Outcome

PROPERTY = settings(max_examples=150, deadline=None, database=None)


def exact_sign_test(wins_a, wins_b):
    n, fewer = wins_a + wins_b, min(wins_a, wins_b)
    tail = Fraction(sum(math.comb(n, j) for j in range(fewer + 1)), 2**n)
    return min(Fraction(1), 2 * tail)


def exact_beta_cdf(x, a, b):
    """I_x(a, b) for integer a, b as a binomial tail, in exact rational arithmetic."""
    x, n = Fraction(x), a + b - 1
    return sum(math.comb(n, j) * x**j * (1 - x) ** (n - j) for j in range(a, n + 1))


# ---- the tally ----------------------------------------------------------------------------------------------------

def test_add_counts_a_search_and_returns_a_new_tally():
    empty = ExperimentTally()
    tally = empty.add().add(Outcome.A).add(Outcome.A).add(Outcome.B).add(Outcome.TIE)
    assert empty == ExperimentTally(0, 0, 0, 0)
    assert tally == ExperimentTally(searches=5, wins_a=2, wins_b=1, ties=1)
    assert (tally.clicked_searches, tally.decisive) == (4, 3)


def test_revise_moves_a_counted_search_to_its_new_outcome():
    tally = ExperimentTally().add().add()  # served, no clicks yet
    tally = tally.revise(Outcome.NONE, Outcome.A)  # first click
    tally = tally.revise(Outcome.A, Outcome.TIE)  # a later click on B's document
    assert tally == ExperimentTally(searches=2, wins_a=0, wins_b=0, ties=1)
    assert tally.revise(Outcome.TIE, Outcome.TIE) == tally


def test_revise_refuses_an_outcome_no_search_has():
    with pytest.raises(ValueError, match="outcome 'b'"):
        ExperimentTally().add(Outcome.A).revise(Outcome.B, Outcome.A)
    with pytest.raises(ValueError, match="outcome 'none'"):
        ExperimentTally().add(Outcome.A).revise(Outcome.NONE, Outcome.A)


def test_an_inconsistent_tally_is_refused():
    with pytest.raises(ValueError):
        ExperimentTally(searches=1, wins_a=2)
    with pytest.raises(ValueError):
        ExperimentTally(searches=-1)


# ---- the sign test ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("wins_a", "wins_b", "p"), [
    (9, 1, 0.021484375),
    (15, 5, 0.04138946533203125),
    (10, 0, 2 / 1024),
    (1, 1, 1.0),
    (0, 1, 1.0),
    (5, 5, 1.0),
    (6, 5, 1.0),
    (0, 2, 0.5),
])
def test_sign_test_known_values(wins_a, wins_b, p):
    assert sign_test_p_value(wins_a, wins_b) == pytest.approx(p, rel=1e-12)
    assert sign_test_p_value(wins_b, wins_a) == sign_test_p_value(wins_a, wins_b)


def test_no_decisive_search_has_p_value_one():
    assert sign_test_p_value(0, 0) == 1.0


@PROPERTY
@given(st.integers(0, 300), st.integers(0, 300))
def test_sign_test_matches_exact_rational_arithmetic(wins_a, wins_b):
    p = sign_test_p_value(wins_a, wins_b)
    assert p == pytest.approx(float(exact_sign_test(wins_a, wins_b)), rel=1e-11)
    assert p == sign_test_p_value(wins_b, wins_a)


@pytest.mark.parametrize(("wins_a", "wins_b"), [(1100, 900), (1600, 1400), (1, 3999), (3, 5000)])
def test_sign_test_matches_exact_arithmetic_for_thousands_of_searches(wins_a, wins_b):
    assert sign_test_p_value(wins_a, wins_b) == pytest.approx(float(exact_sign_test(wins_a, wins_b)), rel=1e-9)


@pytest.mark.parametrize(("n", "excess"), [(100_000, 300), (100_000, 700), (1_000_000, 800), (1_000_000, 2500)])
def test_sign_test_for_large_n_agrees_with_the_normal_approximation(n, excess):
    wins_a = n // 2 + excess
    z = (excess - 0.5) / (math.sqrt(n) / 2)  # with continuity correction
    assert sign_test_p_value(wins_a, n - wins_a) == pytest.approx(2 * NormalDist().cdf(-z), rel=0.01)


def test_sign_test_for_a_million_one_sided_wins_does_not_overflow():
    assert sign_test_p_value(1_000_000, 0) == 0.0  # 2**-999999 is below the smallest float
    assert 0.0 < sign_test_p_value(505_000, 495_000) < 1e-20  # ten standard deviations out


def test_sign_test_refuses_negative_counts():
    with pytest.raises(ValueError):
        sign_test_p_value(-1, 3)


# ---- the credible interval ----------------------------------------------------------------------------------------

def test_win_share_closed_forms():
    # Beta(1, 1) is uniform; Beta(a, 1) has CDF x**a; Beta(1, b) has CDF 1 - (1 - x)**b.
    assert asdict(win_share(0, 0)) == pytest.approx({"mean": 0.5, "lower": 0.025, "upper": 0.975, "level": 0.95})
    share = win_share(1, 0)
    assert (share.mean, share.lower, share.upper) == pytest.approx((2 / 3, math.sqrt(0.025), math.sqrt(0.975)))
    share = win_share(0, 4, level=0.9)
    assert (share.lower, share.upper) == pytest.approx((1 - 0.95 ** (1 / 5), 1 - 0.05 ** (1 / 5)))
    share = win_share(9, 0)
    assert (share.lower, share.upper) == pytest.approx((0.025 ** 0.1, 0.975 ** 0.1))


def test_win_share_known_quantiles():
    share = win_share(3, 1)  # Beta(4, 2)
    assert (share.lower, share.upper) == pytest.approx((0.2835820638819105, 0.9472550494736831), abs=1e-9)


@PROPERTY
@given(st.integers(0, 40), st.integers(0, 40), st.sampled_from([0.5, 0.8, 0.9, 0.95, 0.99]))
def test_win_share_bounds_are_the_exact_beta_quantiles(wins_a, wins_b, level):
    share = win_share(wins_a, wins_b, level)
    tail = (1 - level) / 2
    a, b = wins_a + 1, wins_b + 1
    assert 0.0 < share.lower < share.mean < share.upper < 1.0
    assert float(exact_beta_cdf(share.lower, a, b)) == pytest.approx(tail, abs=1e-12)
    assert float(exact_beta_cdf(share.upper, a, b)) == pytest.approx(1 - tail, abs=1e-12)
    mirrored = win_share(wins_b, wins_a, level)
    assert (share.lower, share.upper) == pytest.approx((1 - mirrored.upper, 1 - mirrored.lower), abs=1e-12)


@pytest.mark.parametrize(("wins_a", "wins_b"), [(600_000, 400_000), (52_000, 48_000), (5_000, 5_000)])
def test_win_share_for_large_counts_agrees_with_the_normal_approximation(wins_a, wins_b):
    a, b = wins_a + 1, wins_b + 1
    mean, sd = a / (a + b), math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    z = NormalDist().inv_cdf(0.975)
    share = win_share(wins_a, wins_b)
    assert (share.lower, share.upper) == pytest.approx((mean - z * sd, mean + z * sd), abs=sd * 0.01)


def test_win_share_refuses_a_level_outside_zero_one():
    for level in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="credible level"):
            win_share(1, 1, level)


# ---- delta and the summary ----------------------------------------------------------------------------------------

def test_interleaving_delta():
    assert interleaving_delta(0, 0, 0) == 0.0
    assert interleaving_delta(6, 2, 2) == pytest.approx(0.4)
    assert interleaving_delta(0, 3, 1) == pytest.approx(-0.75)


def test_summary_holds_every_number_and_serializes_to_json():
    tally = ExperimentTally(searches=40, wins_a=15, wins_b=5, ties=4)
    summary = summarize(tally)
    assert (summary.searches, summary.clicked_searches, summary.ties) == (40, 24, 4)
    assert summary.p_value == pytest.approx(0.04138946533203125)
    assert summary.delta == pytest.approx(10 / 24)
    assert summary.a_win_share == win_share(15, 5)
    assert json.loads(json.dumps(asdict(summary)))["a_win_share"]["level"] == 0.95
