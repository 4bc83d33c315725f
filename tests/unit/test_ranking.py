import pytest

from rerank.ranking import Fusion, rank, scored_prefix

REPLACE = Fusion(mode="replace")


def positions(ranked):
    return [r.position for r in ranked]


def test_window_is_ordered_by_score_and_the_tail_keeps_cluster_order():
    ranked = rank([6, 5, 4, 3, 2, 1], [0.1, 0.9, 0.5, 0.7], REPLACE)
    assert positions(ranked) == [1, 3, 2, 0, 4, 5]
    assert [r.score for r in ranked] == [0.9, 0.7, 0.5, 0.1, None, None]


def test_equal_scores_keep_the_cluster_order():
    assert positions(rank([3, 2, 1], [0.5, 0.5, 0.5], REPLACE)) == [0, 1, 2]


def test_only_the_scored_prefix_is_reordered_and_the_rest_keeps_the_cluster_order():
    ranked = rank([5, 4, 3, 2, 1], [0.2, 0.9, None, 0.95], REPLACE)
    # hit 3 was scored beyond the gap at hit 2 (a cached score, say): not promoted past a hit the model never saw
    assert positions(ranked) == [1, 0, 2, 3, 4]
    assert [r.model_score for r in ranked] == [0.9, 0.2, None, None, None]


def test_a_partial_result_without_its_first_hit_scored_is_the_cluster_order():
    ranked = rank([5, 4, 3, 2, 1], [None, 0.2, None, 0.9], REPLACE)
    assert positions(ranked) == [0, 1, 2, 3, 4]
    assert all(r.score is None and r.model_score is None for r in ranked)  # the cluster's `_score` throughout


@pytest.mark.parametrize(("scores", "k"), [
    ([], 0), ([None], 0), ([0.1], 1), ([0.1, 0.2, None, 0.3], 2), ([None, 0.5], 0), ([0.0, -1.0, 2.0], 3),
])
def test_scored_prefix_counts_the_hits_scored_from_the_top_without_a_gap(scores, k):
    assert scored_prefix(scores) == k


@pytest.mark.parametrize("fusion", [REPLACE, Fusion(), Fusion(weight=1.0), Fusion(weight=0.0), Fusion(mode="rrf")],
                         ids=["replace", "linear", "linear-model-only", "linear-cluster-only", "rrf"])
def test_a_partial_result_keeps_score_and_order_in_agreement_over_the_window(fusion):
    ranked = rank([9.0, 8.0, 7.5, 7.0, 3.0, 2.0, 1.0], [0.1, 0.9, 0.4, None, 0.8, None], fusion)
    assert positions(ranked) == [*positions(ranked)[:3], 3, 4, 5, 6] and set(positions(ranked)[:3]) == {0, 1, 2}
    window = [r.score for r in ranked[:6]]
    assert None not in window and window == sorted(window, reverse=True)
    assert ranked[6].score is None  # past the window: the cluster's `_score`


def test_linear_fusion_scores_hits_after_the_prefix_by_their_cluster_share_on_the_prefixs_scale():
    # prefix cluster scores 10..6 (span 4), model 0 and 1: the tail as a hit the model ranked last
    ranked = rank([10.0, 6.0, 4.0, 2.0], [0.0, 1.0, None, None], Fusion(weight=0.5))
    scores = {r.position: r.score for r in ranked}
    assert scores[0] == pytest.approx(0.5) and scores[1] == pytest.approx(0.5)
    assert scores[2] == pytest.approx(0.5 * (4 - 6) / 4) and scores[3] == pytest.approx(0.5 * (2 - 6) / 4)


def test_a_prefix_of_one_hit_uses_the_windows_cluster_range_for_the_rest():
    ranked = rank([10.0, 6.0, 2.0], [0.3, None, None], Fusion(weight=0.5))
    assert positions(ranked) == [0, 1, 2]
    assert [r.score for r in ranked] == pytest.approx([1.0, 0.5 * (6 - 10) / 8, 0.5 * (2 - 10) / 8])


def test_rrf_scores_hits_after_the_prefix_by_their_cluster_rank_alone():
    ranked = rank([3.0, 2.0, 1.0, 0.5], [0.1, 0.9, 0.5, None], Fusion(mode="rrf", k=1))
    assert positions(ranked) == [1, 0, 2, 3]
    assert [r.score for r in ranked] == pytest.approx([1 / 3 + 1 / 2, 1 / 2 + 1 / 4, 1 / 4 + 1 / 3, 1 / 5])


def test_replace_gives_hits_after_the_prefix_the_prefixs_lowest_score():
    ranked = rank([3.0, 2.0, 1.0, 0.5], [0.4, -2.0, None, 0.9], REPLACE)
    assert positions(ranked) == [0, 1, 2, 3]
    assert [r.score for r in ranked] == [0.4, -2.0, -2.0, -2.0]


def test_cluster_scores_out_of_order_never_make_score_rise_down_the_window():
    ranked = rank([5.0, 4.0, 4.5, 9.0], [0.2, 0.6, None, None], Fusion(weight=0.7))
    window = [r.score for r in ranked]
    assert positions(ranked) == [1, 0, 2, 3] and window == sorted(window, reverse=True)
    assert window == pytest.approx([0.7, 0.3, 0.15, 0.15])  # 4.5 -> 0.15; 9.0 capped at the score before it


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
