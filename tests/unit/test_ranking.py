from rerank.ranking import rank


def positions(ranked):
    return [r.position for r in ranked]


def test_window_is_ordered_by_score_and_the_tail_keeps_cluster_order():
    ranked = rank(6, [0.1, 0.9, 0.5, 0.7])
    assert positions(ranked) == [1, 3, 2, 0, 4, 5]
    assert [r.score for r in ranked[:4]] == [0.9, 0.7, 0.5, 0.1]
    assert [r.score for r in ranked[4:]] == [None, None]


def test_equal_scores_keep_the_cluster_order():
    assert positions(rank(3, [0.5, 0.5, 0.5])) == [0, 1, 2]


def test_unscored_hits_follow_the_scored_ones_in_cluster_order():
    ranked = rank(5, [None, 0.2, None, 0.9])
    assert positions(ranked) == [3, 1, 0, 2, 4]
    assert [r.reranked for r in ranked] == [True, True, False, False, False]


def test_fewer_hits_than_the_window():
    assert positions(rank(2, [0.1, 0.3, 0.2])) == [1, 0]
