"""Replay's pieces without a cluster: reading a capture with its clicks, scoring a candidate over the captured
window, the counterfactual preference and the judged quality of both orders."""
import asyncio

import orjson
import pytest

from proxy.config import parse_config
from rerank_proxy_tools.replay import (
    ReplayError,
    candidate_settings,
    judged_quality,
    predicted_preference,
    read_capture,
    replay_one,
)

CANDIDATE = parse_config({
    "models": {"m": {"backend": "cross-encoder", "source": "x"}},
    "defaults": {"fusion": {"mode": "replace"}},
    "indices": [{"match": "docs", "window": 7}],
    "variants": {"wide": {"window": 9}},
})


def search_line(search_id, query="q", served=(0, 1, 2), **extra):
    window = [{"index": "docs", "id": doc, "cluster_score": 3.0 - i} for i, doc in enumerate("abc")]
    return orjson.dumps({"type": "search", "search_id": search_id, "index": "docs", "query": query,
                         "window": window, "served": list(served), "status": "reranked", **extra})


def write(tmp_path, *lines):
    path = tmp_path / "capture.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


class Engine:
    def __init__(self, scores=None, error=None):
        self.scores, self.error = scores, error

    async def score(self, model, query, texts, timeout_s):
        if self.error:
            raise self.error
        return self.scores


def test_clicks_join_their_search_and_hashed_queries_are_left_out(tmp_path):
    path = write(tmp_path, search_line("s1"),
                 orjson.dumps({"type": "event", "search_id": "s1", "doc_id": "c", "event": "click"}),
                 orjson.dumps({"type": "event", "search_id": "s1", "doc_id": "a", "event": "view"}),
                 orjson.dumps({"type": "event", "search_id": "gone", "doc_id": "a", "event": "click"}),
                 orjson.dumps({"type": "search", "search_id": "s2", "query_sha256": "ab", "window": []}),
                 orjson.dumps({"type": "shadow", "search_id": "s1", "model": "x"}))
    searches, skipped = read_capture([path])
    assert [s.search_id for s in searches] == ["s1"] and searches[0].clicked == {2}
    assert skipped == {"hashed-query": 1, "no-window": 0}


def test_a_broken_line_is_named(tmp_path):
    with pytest.raises(ReplayError, match="capture.jsonl:2"):
        read_capture([write(tmp_path, search_line("s1"), b"{oops")])


def test_the_candidate_orders_the_captured_window_and_is_compared_with_what_was_served(tmp_path):
    (search,), _ = read_capture([write(tmp_path, search_line("s1"))])
    result = asyncio.run(replay_one(Engine([0.1, 0.2, 0.9]), CANDIDATE, search, ["ta", "tb", "tc"], None))
    assert result.order == [2, 1, 0] and result.status == "reranked"
    assert result.agreement.kendall_tau == -1.0


def test_a_failing_candidate_is_a_fallback_in_the_clusters_order(tmp_path):
    (search,), _ = read_capture([write(tmp_path, search_line("s1", served=(2, 0, 1)))])
    result = asyncio.run(replay_one(Engine(error=RuntimeError("boom")), CANDIDATE, search, ["a", "b", "c"], None))
    assert (result.status, result.order) == ("fallback", [0, 1, 2])


def test_candidate_settings_follow_the_index_rule_then_the_variant():
    assert candidate_settings(CANDIDATE, "docs", None).window == 7
    assert candidate_settings(CANDIDATE, "docs", "wide").window == 9
    assert candidate_settings(CANDIDATE, "other", None).window == 50


def test_clicks_on_what_the_candidate_ranks_higher_predict_a_candidate_win(tmp_path):
    lines = [search_line(f"s{i}", served=(0, 1, 2)) for i in range(20)]
    lines += [orjson.dumps({"type": "event", "search_id": f"s{i}", "doc_id": "c"}) for i in range(20)]
    searches, _ = read_capture([write(tmp_path, *lines)])
    replayed = [asyncio.run(replay_one(Engine([0.1, 0.2, 0.9]), CANDIDATE, s, ["a", "b", "c"], None))
                for s in searches]
    tally = predicted_preference(replayed)
    assert tally.searches == 20 and tally.wins_b > 0 and tally.wins_a == 0  # c: the candidate's first pick


def test_judged_quality_scores_both_orders_of_judged_queries(tmp_path):
    (search,), _ = read_capture([write(tmp_path, search_line("s1", query="find c"))])
    result = asyncio.run(replay_one(Engine([0.1, 0.2, 0.9]), CANDIDATE, search, ["a", "b", "c"], None))
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\tc\t1\n")
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"_id": "q1", "text": "find c"}\n{"_id": "q2", "text": "unjudged"}\n')
    quality = judged_quality([result], qrels, queries)
    assert quality["candidate"]["ndcg@10"] == pytest.approx(1.0)
    assert quality["served"]["ndcg@10"] == pytest.approx(0.5)  # c third: 1/log2(4)
    assert quality["served"]["queries"] == 1
