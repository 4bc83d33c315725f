from proxy.decide import Page
from proxy.request_rewrite import ClientView
from proxy.response_rewrite import apply_client_filter_path, rewrite_hits
from proxy.view import SourceFilter
from rerank.ranking import Fusion
from rerank.ranking import rank as fused_rank


def rank(n, scores):
    return fused_rank([float(10 - i) for i in range(n)], scores, Fusion(mode="replace"))


def response(n):
    hits = [{"_id": str(i), "_score": float(10 - i), "_source": {"title": f"t{i}", "text": "x"}} for i in range(n)]
    return {"took": 3, "hits": {"total": {"value": 99, "relation": "eq"}, "max_score": 10.0, "hits": hits},
            "aggregations": {"a": {"value": 1}}}


def view(from_=0, size=10, source=None, widened=False, filter_path=None):
    return ClientView(Page(from_, size), SourceFilter() if source is None else source, widened, filter_path)


def ids(resp):
    return [h["_id"] for h in resp["hits"]["hits"]]


def test_window_is_reordered_and_the_page_sliced():
    out = rewrite_hits(response(6), view(1, 3), rank(6, [0.1, 0.9, 0.5, 0.7]), extra_took_ms=5, explain=False)
    assert ids(out) == ["3", "2", "0"]
    assert out["hits"]["max_score"] == 0.9 and out["took"] == 8


def test_total_and_aggregations_are_untouched():
    out = rewrite_hits(response(4), view(), rank(4, [1, 2, 3, 4]), extra_took_ms=0, explain=False)
    assert out["hits"]["total"] == {"value": 99, "relation": "eq"} and out["aggregations"] == {"a": {"value": 1}}


def test_the_clients_source_view_is_restored_on_widened_requests():
    hidden = rewrite_hits(response(2), view(source=SourceFilter(enabled=False), widened=True), rank(2, [1, 2]),
                          extra_took_ms=0, explain=False)
    assert all("_source" not in h for h in hidden["hits"]["hits"])
    titles = rewrite_hits(response(2), view(source=SourceFilter(includes=("title",)), widened=True),
                          rank(2, [1, 2]), extra_took_ms=0, explain=False)
    assert [h["_source"] for h in titles["hits"]["hits"]] == [{"title": "t1"}, {"title": "t0"}]


def test_explain_adds_cluster_rank_score_and_rerank_score_as_fields():
    out = rewrite_hits(response(2), view(), rank(2, [0.2, 0.8]), extra_took_ms=0, explain=True)
    first = out["hits"]["hits"][0]
    assert first["fields"] == {"_rerank.cluster_score": [9.0], "_rerank.cluster_rank": [2],
                               "_rerank.model_score": [0.8], "_rerank.score": [0.8]}


def test_fallback_ranking_keeps_cluster_order_and_scores():
    out = rewrite_hits(response(3), view(), rank(3, [None, None, None]), extra_took_ms=0, explain=False)
    assert ids(out) == ["0", "1", "2"] and [h["_score"] for h in out["hits"]["hits"]] == [10.0, 9.0, 8.0]
    assert out["hits"]["max_score"] == 10.0


def test_filter_path_is_applied_last():
    out = rewrite_hits(response(3), view(filter_path="hits.hits._id"), rank(3, [3, 2, 1]), extra_took_ms=0,
                       explain=False)
    assert apply_client_filter_path(out, view(filter_path="hits.hits._id")) == {
        "hits": {"hits": [{"_id": "0"}, {"_id": "1"}, {"_id": "2"}]}
    }
