"""How far two rankings of one search's hits agree: what shadow scoring and `replay` report.

- `overlap_at`: the share of the top k that both rankings hold, order aside (1.0: the same top-k set).
- `kendall_tau`: Kendall's tau-b over the documents both rankings hold, from -1 (one reverses the other) to 1 (the
  same order). Every pair of documents counts the same, wherever it sits.
- `rank_biased_overlap`: RBO (Webber, Moffat and Zobel 2010), the extrapolated form for rankings cut at a depth,
  with persistence `p`: the top counts most, each next depth `p` times as much. 1.0 for identical rankings.

Pure functions of two sequences of hashable ids; no ranking may hold an id twice.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

RBO_PERSISTENCE = 0.9  # the first 10 ranks carry about 86% of the weight


def overlap_at(a: Sequence[Hashable], b: Sequence[Hashable], k: int = 10) -> float:
    top_a, top_b = set(a[:k]), set(b[:k])
    depth = max(len(top_a), len(top_b))
    return len(top_a & top_b) / depth if depth else 1.0


def kendall_tau(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """tau-b of the common documents (no ties within a ranking, so tau-b is tau-a over them). 1.0 for fewer than two
    common documents: nothing disagrees."""
    in_b = {doc: rank for rank, doc in enumerate(b)}
    ranks = [in_b[doc] for doc in a if doc in in_b]  # b's ranks in a's order
    n = len(ranks)
    if n < 2:
        return 1.0
    discordant = _inversions(ranks)
    pairs = n * (n - 1) // 2
    return (pairs - 2 * discordant) / pairs


def _inversions(values: list[int]) -> int:
    """Pairs out of order, counted by merge sort: O(n log n), for windows of thousands."""
    if len(values) < 2:
        return 0
    middle = len(values) // 2
    left, right = sorted(values[:middle]), sorted(values[middle:])
    count = _inversions(values[:middle]) + _inversions(values[middle:])
    j = 0
    for value in left:  # for each left value, the right values smaller than it are inversions
        while j < len(right) and right[j] < value:
            j += 1
        count += j
    return count


def rank_biased_overlap(a: Sequence[Hashable], b: Sequence[Hashable], p: float = RBO_PERSISTENCE) -> float:
    """RBO_ext (Webber et al., eq. 32) for two rankings of possibly different lengths."""
    if not 0 < p < 1:
        raise ValueError(f"RBO persistence must be in (0, 1), got {p}")
    if not a and not b:
        return 1.0
    long, short = (a, b) if len(a) >= len(b) else (b, a)
    s, l_len = len(short), len(long)
    if s == 0:
        return 0.0
    seen_long: set[Hashable] = set()
    seen_short: set[Hashable] = set()
    overlap = 0
    overlaps = [0] * (l_len + 1)  # X_d, the overlap at depth d
    for d in range(1, l_len + 1):
        x = long[d - 1]
        if x in seen_short:
            overlap += 1
        seen_long.add(x)
        if d <= s:
            y = short[d - 1]
            if y in seen_long:
                overlap += 1
            seen_short.add(y)
        overlaps[d] = overlap
    x_s, x_l = overlaps[s], overlaps[l_len]
    total = sum(overlaps[d] / d * p**d for d in range(1, l_len + 1))
    total += sum(x_s * (d - s) / (s * d) * p**d for d in range(s + 1, l_len + 1))
    return (1 - p) / p * total + ((x_l - x_s) / l_len + x_s / s) * p**l_len


@dataclass(frozen=True)
class Agreement:
    overlap_at_10: float
    kendall_tau: float
    rbo: float


def agreement(a: Sequence[Hashable], b: Sequence[Hashable]) -> Agreement:
    return Agreement(overlap_at(a, b, 10), kendall_tau(a, b), rank_biased_overlap(a, b))
