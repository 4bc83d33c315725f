"""A partial result (scoring cut short by a deadline or overload) is never served below the cluster's order.

Hand-built windows with relevance labels and a model that is good on them (it orders by relevance): whatever subset
of the window was scored, the served order's NDCG@10 is at least the cluster's, and it grows with the scored
prefix. The adversarial subset is the one a length-sorted engine leaves at a deadline: only the shortest documents,
here low in the cluster's order and not relevant. Serving the scored hits first (the old rule) would put them on
top; only the prefix is reordered now, so that subset serves the cluster's order.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest

from rerank.ranking import Fusion, rank

MODEL_LED = [Fusion(mode="replace"), Fusion(weight=0.8)]  # fusions where a model that orders by relevance leads


def ndcg_at_10(order: Sequence[int], relevance: Sequence[int]) -> float:
    """NDCG@10 of serving the cluster's hits in `order` (positions), gain = the label, as trec_eval counts it."""
    def dcg(gains: Sequence[int]) -> float:
        return sum(g / math.log2(i + 2) for i, g in enumerate(gains[:10]))

    ideal = dcg(sorted(relevance, reverse=True))
    return dcg([relevance[i] for i in order]) / ideal if ideal else 0.0


def good_model(relevance: Sequence[int], seed: int = 0) -> list[float]:
    """Orders by relevance; ties broken at random (noise well below one label step)."""
    rng = random.Random(seed)
    return [label + 0.01 * rng.random() for label in relevance]


def served(cluster: Sequence[float], model: Sequence[float], scored: set[int], fusion: Fusion) -> list[int]:
    ranked = rank(cluster, [s if i in scored else None for i, s in enumerate(model)], fusion)
    return [r.position for r in ranked]


def scored_first(model: Sequence[float], scored: set[int]) -> list[int]:
    """The old rule: every scored hit, by model score, ahead of every unscored one in the cluster's order."""
    return sorted(scored, key=lambda i: -model[i]) + [i for i in range(len(model)) if i not in scored]


# A window of 30: relevant hits at cluster ranks 0, 3, 4, 9, 14, 22; the shortest documents are the last six, none
# of them relevant (short stubs at the bottom of a BM25 list).
RELEVANCE = [1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
CLUSTER = [30.0 - i for i in range(len(RELEVANCE))]
LENGTHS = [120 - i for i in range(24)] + [8, 7, 6, 5, 4, 3]
SHORTEST = set(sorted(range(len(LENGTHS)), key=LENGTHS.__getitem__)[:6])


@pytest.mark.parametrize("fusion", [*MODEL_LED, Fusion()], ids=["replace", "linear-0.8", "linear-0.5"])
def test_only_the_shortest_documents_scored_serves_the_cluster_order(fusion: Fusion) -> None:
    model = good_model(RELEVANCE)
    cluster_ndcg = ndcg_at_10(range(len(RELEVANCE)), RELEVANCE)
    assert ndcg_at_10(scored_first(model, SHORTEST), RELEVANCE) < cluster_ndcg - 0.1  # the case is adversarial
    order = served(CLUSTER, model, SHORTEST, fusion)
    assert order == list(range(len(RELEVANCE)))  # hit 0 was not scored: nothing is reordered
    assert ndcg_at_10(order, RELEVANCE) == cluster_ndcg


@pytest.mark.parametrize("fusion", [*MODEL_LED, Fusion()], ids=["replace", "linear-0.8", "linear-0.5"])
def test_the_shortest_documents_and_the_top_scored_reorder_the_top_only(fusion: Fusion) -> None:
    model = good_model(RELEVANCE)
    scored = SHORTEST | set(range(8))  # a deadline after a rank-first start: the top 8, plus the short tail
    order = served(CLUSTER, model, scored, fusion)
    assert sorted(order[:8]) == list(range(8)) and order[8:] == list(range(8, len(RELEVANCE)))
    assert ndcg_at_10(order, RELEVANCE) > ndcg_at_10(range(len(RELEVANCE)), RELEVANCE)


@pytest.mark.parametrize("fusion", MODEL_LED, ids=["replace", "linear-0.8"])
@pytest.mark.parametrize("seed", range(40))
def test_any_scored_subset_serves_at_least_the_cluster_order(fusion: Fusion, seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 60)
    relevance = [rng.choice([0, 0, 0, 1, 2]) for _ in range(n)]
    cluster = sorted((rng.uniform(1, 30) for _ in range(n)), reverse=True)
    model = good_model(relevance, seed)
    cluster_ndcg = ndcg_at_10(range(n), relevance)
    subsets = [set(range(k)) for k in range(n + 1)]  # prefixes
    subsets += [set(rng.sample(range(n), rng.randint(0, n))) for _ in range(10)]  # scattered, e.g. cache hits
    for scored in subsets:
        assert ndcg_at_10(served(cluster, model, scored, fusion), relevance) >= cluster_ndcg - 1e-12


@pytest.mark.parametrize("fusion", MODEL_LED, ids=["replace", "linear-0.8"])
@pytest.mark.parametrize("seed", range(20))
def test_the_more_is_scored_from_the_top_the_better_the_served_order(fusion: Fusion, seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(2, 60)
    relevance = [rng.choice([0, 0, 0, 1, 2]) for _ in range(n)]
    cluster = sorted((rng.uniform(1, 30) for _ in range(n)), reverse=True)
    model = good_model(relevance, seed)
    by_prefix = [ndcg_at_10(served(cluster, model, set(range(k)), fusion), relevance) for k in range(n + 1)]
    assert all(later >= earlier - 1e-12 for earlier, later in zip(by_prefix, by_prefix[1:]))
    assert by_prefix[0] == ndcg_at_10(range(n), relevance)
    assert by_prefix[-1] == ndcg_at_10(sorted(range(n), key=lambda i: -model[i]), relevance)  # the full rerank
