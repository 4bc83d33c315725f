"""The search pipeline's steps before and after the cluster, without a network."""
import asyncio

import pytest

from proxy.config import parse_config
from proxy.resolve import IndexResolver
from proxy.search import RequestOptions, finish, plan_search, plan_template
from rerank.engine import ModelUnavailable

CONFIG = parse_config({
    "models": {"m": {"backend": "bi-encoder", "source": "x"}},
    "defaults": {"window": 4, "fusion": {"mode": "replace"}, "text": {"fields": ["t"]}},
    "indices": [{"match": "off-*", "enabled": False}],
    "variants": {"tiny": {"window": 2}},
})
OPTIONS = RequestOptions(force=None, variant="control", query_override=None, explain=False)


async def no_aliases(name):
    return []


def plan(body, params=(), index="docs", options=OPTIONS, planner=plan_search):
    return asyncio.run(planner(CONFIG, IndexResolver(CONFIG, no_aliases), index, body, list(params), options))


class Engine:
    """Stands in for the scoring engine: fixed scores, or an error, per call."""

    def __init__(self, result):
        self.result, self.calls = result, []

    async def score(self, model, query, docs, timeout_s, timing=None):
        self.calls.append((model, query, list(docs)))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def cluster_response(n):
    return {"took": 1, "hits": {"max_score": 9.0, "hits": [
        {"_id": str(i), "_score": float(9 - i), "_source": {"t": f"text {i}"}} for i in range(n)]}}


def test_plan_carries_query_model_window_and_rewritten_body():
    p = plan({"query": {"match": {"t": "hello"}}, "size": 2})
    assert p.decision.rerank and (p.query, p.model, p.window) == ("hello", "m", 4)
    assert (p.upstream_body["from"], p.upstream_body["size"]) == (0, 4)


def test_disabled_rule_and_unconfigured_defaults_are_told_apart():
    assert plan({"query": {"match": {"t": "x"}}}, index="off-1").decision.reason == "disabled"
    forced = RequestOptions(force="on", variant="control", query_override=None, explain=False)
    assert plan({"query": {"match": {"t": "x"}}}, index="off-1", options=forced).decision.rerank


def test_query_header_overrides_the_dsl():
    options = RequestOptions(force=None, variant="control", query_override="typed text", explain=False)
    assert plan({"query": {"match_all": {}}}, options=options).query == "typed text"


def test_template_plan_takes_the_query_and_page_from_the_configured_params():
    body = {"id": "tpl", "params": {"query_string": "find me", "from": 1, "size": 2}}
    p = plan(body, planner=plan_template)
    assert p.decision.rerank and p.query == "find me"
    assert p.upstream_body == {"id": "tpl", "params": {"query_string": "find me", "from": 0, "size": 4}}
    assert (p.view.page.from_, p.view.page.size) == (1, 2)


def test_template_without_the_query_param_is_skipped():
    assert plan({"id": "tpl", "params": {}}, planner=plan_template).decision.reason == "no-query-text"


def test_template_without_a_size_param_reranks_what_it_returns():
    p = plan({"id": "tpl", "params": {"query_string": "q"}}, planner=plan_template)
    assert p.window is None and p.upstream_body["params"] == {"query_string": "q"}


def finish_with(engine, n=4, body=None):
    p = plan(body or {"query": {"match": {"t": "hello"}}, "size": 4})
    return asyncio.run(finish(p, cluster_response(n), engine, OPTIONS, opensearch=False))


def test_finish_reorders_by_the_models_scores():
    outcome = finish_with(Engine([0.1, 0.4, 0.3, 0.2]))
    assert [h["_id"] for h in outcome.response["hits"]["hits"]] == ["1", "2", "3", "0"]
    assert outcome.status == "reranked"


def test_finish_sends_the_built_texts_of_the_window_only():
    engine = Engine([0.0] * 4)
    finish_with(engine, n=6)
    assert engine.calls == [("m", "hello", ["text 0", "text 1", "text 2", "text 3"])]


def test_a_partial_result_reorders_its_scored_top_and_says_how_many():
    outcome = finish_with(Engine([0.5, 0.9, None, 0.95]))
    assert [h["_id"] for h in outcome.response["hits"]["hits"]] == ["1", "0", "2", "3"]
    assert outcome.status == "partial; reranked=2"


def test_scores_without_the_top_hit_leave_the_clusters_order_as_a_deadline_fallback():
    outcome = finish_with(Engine([None, 0.5, None, 0.9]))
    assert [h["_id"] for h in outcome.response["hits"]["hits"]] == ["0", "1", "2", "3"]
    assert outcome.status == "fallback; reason=deadline"


@pytest.mark.parametrize(
    "error,reason",
    [(ModelUnavailable("loading"), "model-unavailable"), (TimeoutError(), "deadline"), (RuntimeError("x"), "model-error")],
)
def test_model_trouble_falls_back_to_the_cluster_order(error, reason):
    outcome = finish_with(Engine(error))
    assert [h["_id"] for h in outcome.response["hits"]["hits"]] == ["0", "1", "2", "3"]
    assert outcome.status == f"fallback; reason={reason}"


def test_chunked_documents_score_by_their_best_chunk_and_explain_names_it():
    config = parse_config({
        "models": {"m": {"backend": "bi-encoder", "source": "x"}},
        "defaults": {"window": 2, "fusion": {"mode": "replace"}, "text": {"fields": ["t"]},
                     "chunking": {"size": 2, "overlap": 0, "max_chunks": 3}},
    })
    options = RequestOptions(force=None, variant="control", query_override=None, explain=True)
    p = asyncio.run(plan_search(config, IndexResolver(config, no_aliases), "docs",
                                {"query": {"match": {"t": "q"}}, "size": 2}, [], options))
    response = {"hits": {"hits": [{"_id": "a", "_score": 2.0, "_source": {"t": "one two three four"}},
                                  {"_id": "b", "_score": 1.0, "_source": {"t": "five"}}]}}
    engine = Engine([0.1, 0.8, 0.5])
    outcome = asyncio.run(finish(p, response, engine, options, opensearch=False))
    assert engine.calls[0][2] == ["one two", "three four", "five"]
    first = outcome.response["hits"]["hits"][0]
    assert first["_id"] == "a" and first["_score"] == 0.8 and first["fields"]["_rerank.chunk"] == [1]


class Limits:
    """Stands in for the indices' `index.max_result_window`."""

    def __init__(self, limit):
        self.limit_value, self.asked = limit, []

    async def limit(self, expression):
        self.asked.append(expression)
        return self.limit_value


def limited_plan(body, limit, planner=plan_search, index="docs"):
    windows = Limits(limit)
    p = asyncio.run(planner(CONFIG, IndexResolver(CONFIG, no_aliases), index, body, [], OPTIONS, windows))
    return p, windows


def test_the_window_is_cut_to_the_indices_max_result_window():
    p, windows = limited_plan({"query": {"match": {"t": "hello"}}, "size": 2}, 3)
    assert p.decision.rerank and p.window == 3 and p.upstream_body["size"] == 3
    assert windows.asked == ["docs"]


def test_a_max_result_window_above_the_window_leaves_it_and_an_unknown_one_too():
    for limit in (10_000, None):
        p, _ = limited_plan({"query": {"match": {"t": "hello"}}, "size": 2}, limit)
        assert p.window == 4 and p.upstream_body["size"] == 4


@pytest.mark.parametrize("page", [{"size": 4}, {"from": 2, "size": 2}, {"from": 3, "size": 1}])
def test_a_page_past_max_result_window_is_the_clusters_to_refuse(page):
    p, _ = limited_plan({"query": {"match": {"t": "hello"}}, **page}, 3)
    assert not p.decision.rerank and p.skip_status == "skipped; reason=over-max-result-window"


def test_a_page_that_ends_at_max_result_window_is_reranked_within_it():
    p, _ = limited_plan({"query": {"match": {"t": "hello"}}, "from": 1, "size": 2}, 3)
    assert p.decision.rerank and p.upstream_body["size"] == 3


def test_skipped_searches_do_not_look_the_window_up():
    _, windows = limited_plan({"query": {"match": {"t": "hello"}}, "sort": ["date"]}, 3)
    assert windows.asked == []


def test_a_template_page_is_cut_to_max_result_window_too():
    body = {"id": "tpl", "params": {"query_string": "q", "from": 0, "size": 2}}
    p, _ = limited_plan(body, 3, planner=plan_template)
    assert p.decision.rerank and p.upstream_body["params"]["size"] == 3
    over, _ = limited_plan({"id": "tpl", "params": {"query_string": "q", "size": 5}}, 3, planner=plan_template)
    assert over.skip_status == "skipped; reason=over-max-result-window"


@pytest.mark.parametrize("size", [2**31, 10**20, float(10**20)])
def test_a_page_past_a_java_int_is_left_to_the_cluster(size):
    assert plan({"query": {"match": {"t": "hello"}}, "size": size}).skip_status == "skipped; reason=bad-page"
    body = {"id": "tpl", "params": {"query_string": "q", "size": size}}
    assert plan(body, planner=plan_template).skip_status == "skipped; reason=bad-page"
