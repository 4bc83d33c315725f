"""Per-experiment counters of interleaving outcomes, and what they say about A versus B.

- `ExperimentTally`: the counts (searches served, wins of A, wins of B, ties; clicked searches follow from them). It
  is immutable: `add` counts a new search and `revise` moves a search that is already counted to another outcome
  (for example when a later click turns its tie into a win). Each returns a new tally, so a reader never sees half
  of an update.
- `sign_test_p_value`: the exact two-sided binomial sign test of wins A against wins B, with ties left out.
- `win_share`: the share of A wins among decisive searches. It gives the posterior mean and an equal-tailed credible
  interval, from a Beta posterior under a uniform prior.
- `interleaving_delta`: (wins A - wins B) / clicked searches, the usual interleaving score, in [-1, 1].
- `summarize`: all of these at once, as one JSON-ready dataclass (`dataclasses.asdict`).

The numbers are computed exactly up to float rounding, with no scipy. Both the sign test and the Beta CDF with
integer parameters are binomial tails, which are summed in log space from their largest term outward, so nothing
overflows for n of a million or more.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from .interleaving import Outcome


@dataclass(frozen=True)
class ExperimentTally:
    searches: int = 0  # searches served interleaved, clicked or not
    wins_a: int = 0
    wins_b: int = 0
    ties: int = 0

    def __post_init__(self) -> None:
        if min(self.searches, self.wins_a, self.wins_b, self.ties) < 0 or self.clicked_searches > self.searches:
            raise ValueError(f"inconsistent experiment tally: {self}")

    @property
    def clicked_searches(self) -> int:
        return self.wins_a + self.wins_b + self.ties

    @property
    def decisive(self) -> int:
        return self.wins_a + self.wins_b

    def add(self, outcome: Outcome = Outcome.NONE) -> ExperimentTally:
        """The tally with one more search, whose outcome so far is `outcome` (NONE when it was just served)."""
        served = ExperimentTally(self.searches + 1, self.wins_a, self.wins_b, self.ties)
        return served.revise(Outcome.NONE, outcome)

    def revise(self, previous: Outcome, current: Outcome) -> ExperimentTally:
        """The tally with one counted search moved from outcome `previous` to `current`. It raises ValueError when no
        search has outcome `previous`."""
        counts = {Outcome.A: self.wins_a, Outcome.B: self.wins_b, Outcome.TIE: self.ties,
                  Outcome.NONE: self.searches - self.clicked_searches}
        if counts[previous] == 0:
            raise ValueError(f"no search of this experiment has outcome {previous.value!r}")
        counts[previous] -= 1
        counts[current] += 1
        return ExperimentTally(self.searches, counts[Outcome.A], counts[Outcome.B], counts[Outcome.TIE])


@dataclass(frozen=True)
class WinShare:
    """The share of A wins among decisive searches: its posterior mean and the central `level` credible interval."""

    mean: float
    lower: float
    upper: float
    level: float


@dataclass(frozen=True)
class ExperimentSummary:
    searches: int
    clicked_searches: int
    wins_a: int
    wins_b: int
    ties: int
    delta: float
    p_value: float
    a_win_share: WinShare


def summarize(tally: ExperimentTally, level: float = 0.95) -> ExperimentSummary:
    return ExperimentSummary(
        searches=tally.searches, clicked_searches=tally.clicked_searches, wins_a=tally.wins_a,
        wins_b=tally.wins_b, ties=tally.ties,
        delta=interleaving_delta(tally.wins_a, tally.wins_b, tally.ties),
        p_value=sign_test_p_value(tally.wins_a, tally.wins_b),
        a_win_share=win_share(tally.wins_a, tally.wins_b, level))


def interleaving_delta(wins_a: int, wins_b: int, ties: int) -> float:
    """(wins A - wins B) / (wins A + wins B + ties). It is 0.0 before any click, and positive when A is preferred."""
    clicked = wins_a + wins_b + ties
    return (wins_a - wins_b) / clicked if clicked else 0.0


def sign_test_p_value(wins_a: int, wins_b: int) -> float:
    """The exact two-sided p-value of the sign test, under the null hypothesis that A and B win equally often. It
    is P(a fair Binomial(n) lands at least as far from n/2 as wins A did), with n = wins A + wins B."""
    _check_counts(wins_a, wins_b)
    n = wins_a + wins_b
    fewer = min(wins_a, wins_b)
    if 2 * fewer + 1 >= n:
        return 1.0  # the smaller tail already holds half the mass
    # The null distribution is symmetric, so the two-sided p-value is twice the smaller tail.
    return min(1.0, 2.0 * _binomial_run(n, fewer, 0.5, step=-1))


def win_share(wins_a: int, wins_b: int, level: float = 0.95) -> WinShare:
    """Posterior of the probability that a decisive search goes to A: Beta(wins A + 1, wins B + 1), from a uniform
    prior. Its mean, and its quantiles at (1 - level)/2 and (1 + level)/2."""
    _check_counts(wins_a, wins_b)
    if not 0.0 < level < 1.0:
        raise ValueError(f"credible level must be in (0, 1), got {level}")
    a, b = wins_a + 1, wins_b + 1
    tail = (1.0 - level) / 2.0
    return WinShare(mean=a / (a + b), lower=_beta_quantile(tail, a, b), upper=_beta_quantile(1.0 - tail, a, b),
                    level=level)


def _check_counts(wins_a: int, wins_b: int) -> None:
    if wins_a < 0 or wins_b < 0:
        raise ValueError(f"win counts must be >= 0, got {wins_a} and {wins_b}")


def _log_binomial_pmf(n: int, j: int, p: float) -> float:
    return math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * math.log(p) + (n - j) * math.log1p(-p)


def _binomial_run(n: int, start: int, p: float, step: int) -> float:
    """The sum of Binomial(n, p) probabilities from j = start to the end in direction `step` (+1: up to n, -1: down
    to 0), for a run that starts at or beyond the mode, where the terms only shrink.

    The terms are kept relative to the first one, which is the largest, so they never overflow. The sum stops once
    the rest is provably negligible. Past the mode, the ratio r of consecutive terms only decreases, so the rest is
    at most term * r / (1 - r). The cost grows as sqrt(n), not n.
    """
    odds = p / (1.0 - p) if step > 0 else (1.0 - p) / p
    term = total = 1.0
    j = start
    while 0 <= j + step <= n:
        ratio = ((n - j) / (j + 1) if step > 0 else j / (n - j + 1)) * odds
        term *= ratio
        total += term
        j += step
        if ratio < 1.0 and term * ratio / (1.0 - ratio) <= total * 2.0**-60:
            break
    return math.exp(_log_binomial_pmf(n, start, p) + math.log(total))


def _beta_cdf(x: float, a: int, b: int) -> float:
    """The regularized incomplete beta I_x(a, b) for integer a, b >= 1. It equals P(Binomial(a+b-1, x) >= a)
    (DLMF 8.17.5), summed from whichever side of the mode keeps the terms shrinking."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    n = a + b - 1
    if a >= (n + 1) * x - 1:  # a is at or above the mode: sum upward from a
        return _binomial_run(n, a, x, step=1)
    return 1.0 - _binomial_run(n, a - 1, x, step=-1)  # a is below the mode: the complement is the shrinking run


def _beta_log_pdf(x: float, a: int, b: int) -> float:
    return math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + (a - 1) * math.log(x) + (b - 1) * math.log1p(-x)


def _beta_quantile(q: float, a: int, b: int) -> float:
    """The x with I_x(a, b) = q. It uses Newton's method on the CDF, started from the normal approximation and kept
    inside a bracket that shrinks at every step. A step that would leave the bracket, or a density that underflowed,
    falls back to bisection, so the search always converges."""
    lo, hi = 0.0, 1.0
    mean = a / (a + b)
    sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    x = mean + NormalDist().inv_cdf(q) * sd
    if not 0.0 < x < 1.0:
        x = mean
    for _ in range(200):
        error = _beta_cdf(x, a, b) - q
        if error == 0.0:
            return x
        if error < 0.0:
            lo = x
        else:
            hi = x
        density = math.exp(_beta_log_pdf(x, a, b))
        candidate = x - error / density if density > 0.0 else (lo + hi) / 2.0
        if not lo < candidate < hi:
            candidate = (lo + hi) / 2.0
        if abs(candidate - x) <= 4.0 * math.ulp(x):
            return candidate
        x = candidate
    return x
