import pytest

from rerank.ranking import Fusion, rank

REPLACE = Fusion(mode="replace")


def positions(ranked):
    return [r.position for r in ranked]


def test_window_is_ordered_by_score_and_the_tail_keeps_cluster_order():
    ranked = rank([6, 5, 4, 3, 2, 1], [0.1, 0.9, 0.5, 0.7], REPLACE)
    assert positions(ranked) == [1, 3, 2, 0, 4, 5]
    assert [r.score for r in ranked] == [0.9, 0.7, 0.5, 0.1, None, None]


def test_equal_scores_keep_the_cluster_order():
    assert positions(rank([3, 2, 1], [0.5, 0.5, 0.5], REPLACE)) == [0, 1, 2]


def test_unscored_hits_follow_the_scored_ones_in_cluster_order():
    ranked = rank([5, 4, 3, 2, 1], [None, 0.2, None, 0.9], REPLACE)
    assert positions(ranked) == [3, 1, 0, 2, 4]
    assert [r.model_score is not None for r in ranked] == [True, True, False, False, False]


def test_fewer_hits_than_the_window():
    assert positions(rank([2, 1], [0.1, 0.3, 0.2], REPLACE)) == [1, 0]


def test_linear_fusion_weighs_normalised_cluster_and_model_scores():
    # cluster prefers 0, model prefers 2; with equal weights the middle document wins on both halves,
    # and the tie between 0 and 2 keeps the cluster's order.
    ranked = rank([10.0, 8.0, 2.0], [0.0, 0.8, 1.0], Fusion(mode="linear", weight=0.5))
    assert positions(ranked) == [1, 0, 2]
    scores = {r.position: r.score for r in ranked}
    assert scores[0] == pytest.approx(0.5) and scores[1] == pytest.approx(0.5 * 0.75 + 0.4)
    assert scores[2] == pytest.approx(0.5)


def test_linear_weight_one_is_the_model_order_and_zero_the_cluster_order():
    cluster, model = [9.0, 7.0, 5.0, 1.0], [0.1, 0.4, 0.3, 0.9]
    assert positions(rank(cluster, model, Fusion(weight=1.0))) == [3, 1, 2, 0]
    assert positions(rank(cluster, model, Fusion(weight=0.0))) == [0, 1, 2, 3]


def test_rrf_uses_ranks_only():
    ranked = rank([100.0, 1.0, 0.5], [0.1, 0.2, 0.9], Fusion(mode="rrf", k=1))
    # position 0: 1/2 + 1/4; position 1: 1/3 + 1/3; position 2: 1/4 + 1/2
    assert [round(r.score, 4) for r in ranked] == [0.75, 0.75, 0.6667]
    assert positions(ranked) == [0, 2, 1]


def test_scores_and_order_always_agree():
    ranked = rank([5.0, 3.0, 9.0, 1.0], [0.3, 0.9, 0.1, 0.5], Fusion())
    scores = [r.score for r in ranked]
    assert scores == sorted(scores, reverse=True)


def test_missing_cluster_scores_fall_back_to_the_model_score():
    assert positions(rank([None, None], [0.1, 0.9], Fusion(mode="linear"))) == [1, 0]


@pytest.mark.parametrize("mode", ["replace", "linear", "rrf"])
def test_nothing_scored_keeps_the_cluster_order(mode):
    assert positions(rank([3.0, 2.0], [None, None], Fusion(mode=mode))) == [0, 1]
    assert rank([], [], Fusion(mode=mode)) == []
