"""An interleaved search's steps, without a network: both sides planned, one upstream request, a merged page."""
import asyncio
import dataclasses

from proxy.config import parse_config
from proxy.experiment_search import finish_interleaved, plan_interleaved
from proxy.resolve import IndexResolver
from proxy.search import RequestOptions, Skip, plan_search
from rerank.engine import ModelUnavailable

CONFIG = parse_config({
    "models": {"m": {"backend": "bi-encoder", "source": "x"}, "n": {"backend": "bi-encoder", "source": "y"}},
    "defaults": {"enabled": False, "window": 6, "fusion": {"mode": "replace"}, "text": {"fields": ["t"]}},
    "variants": {"model": {"enabled": True}, "wide": {"enabled": True, "model": "n", "window": 8,
                                                      "text": {"fields": ["u"]}}},
    "experiments": {"bm25-vs-model": {"a": "control", "b": "model", "indices": ["docs"]},
                    "model-vs-wide": {"a": "model", "b": "wide", "indices": ["docs"], "method": "balanced"}},
})
OPTIONS = RequestOptions(force=None, variant="control", query_override=None, explain=False)
QUERY = {"query": {"match": {"t": "hello"}}}


async def no_aliases(name):
    return []


def plan(experiment, body=QUERY):
    resolver = IndexResolver(CONFIG, no_aliases)

    def plan_side(variant):
        return plan_search(CONFIG, resolver, "docs", body, [], dataclasses.replace(OPTIONS, variant=variant))

    return asyncio.run(plan_interleaved(CONFIG, experiment, body, [], plan_side))


class Engine:
    """Scores per model: `reverse` puts the cluster's last hit first; a model named in `failing` raises."""

    def __init__(self, failing=()):
        self.failing = failing

    async def score(self, model, query, docs, timeout_s, timing=None):
        if model in self.failing:
            raise ModelUnavailable(model)
        return [float(i) for i in range(len(docs))]  # the cluster's order, reversed


def response(n, ids=None):
    ids = ids or [str(i) for i in range(n)]
    return {"took": 1, "hits": {"max_score": 9.0, "hits": [
        {"_index": "docs", "_id": ids[i], "_score": float(20 - i), "_source": {"t": f"t{i}", "u": f"u{i}"}}
        for i in range(n)]}}


def finish(p, n=6, engine=None, seed=7, explain=False, ids=None):
    return asyncio.run(finish_interleaved(p, response(n, ids), engine or Engine(), seed=seed, explain=explain,
                                          opensearch=False))


def test_a_side_with_reranking_off_ranks_by_the_clusters_order_and_the_other_side_plans_the_request():
    p = plan("bm25-vs-model", {**QUERY, "size": 4})
    a, b = p.sides
    assert isinstance(a, Skip) and a.reason == "not-configured" and b.model == "m"
    assert (p.upstream_body["from"], p.upstream_body["size"]) == (0, 6)


def test_neither_side_reranking_is_no_experiment():
    assert plan("bm25-vs-model", {**QUERY, "sort": ["_doc"]}) is None


def test_sides_asking_differently_share_one_request_for_the_larger_window_and_both_sides_fields():
    p = plan("model-vs-wide", {**QUERY, "size": 4, "_source": ["title"]})
    assert p.upstream_body["size"] == 8
    assert set(p.upstream_body["_source"]["includes"]) == {"title", "t", "u"}


def test_merged_page_takes_from_both_rankings_never_repeats_and_its_score_falls():
    outcome = finish(plan("bm25-vs-model"), explain=True)
    hits = outcome.response["hits"]["hits"]
    ids = [h["_id"] for h in hits]
    assert outcome.status == "interleaved" and len(ids) == len(set(ids)) == 6
    assert {"0", "5"} <= set(ids[:2])  # the best of a (cluster order) and of b (reversed) lead
    scores = [h["_score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    teams = [h["fields"]["_rerank.team"][0] for h in hits]
    assert abs(teams.count("a") - teams.count("b")) <= 1
    assert outcome.interleaving.docs == tuple(("docs", i) for i in ids)


def test_the_same_seed_serves_the_same_list_and_pages_are_slices_of_it():
    whole = finish(plan("bm25-vs-model"), seed=11)
    second_page = plan("bm25-vs-model", {**QUERY, "from": 2, "size": 2})
    paged = finish(second_page, seed=11)
    whole_ids = [h["_id"] for h in whole.response["hits"]["hits"]]
    assert [h["_id"] for h in paged.response["hits"]["hits"]] == whole_ids[2:4]
    assert paged.interleaving.docs == whole.interleaving.docs[:4]  # held down to the end of the served page


def test_balanced_interleaving_is_served_for_a_balanced_experiment():
    outcome = finish(plan("model-vs-wide"), n=8)
    assert outcome.status == "interleaved" and hasattr(outcome.interleaving, "ranks_a")


def test_a_model_falling_back_serves_side_as_page_and_is_not_counted():
    outcome = finish(plan("bm25-vs-model"), engine=Engine(failing=("m",)))
    assert outcome.interleaving is None and outcome.excluded == "model-trouble"
    assert outcome.status == "skipped; reason=not-configured"  # side a: control, the cluster's order
    assert [h["_id"] for h in outcome.response["hits"]["hits"]] == [str(i) for i in range(6)]


def test_repeated_ids_are_not_interleaved():
    outcome = finish(plan("bm25-vs-model"), ids=["x", "x", "1", "2", "3", "4"])
    assert outcome.interleaving is None and outcome.excluded == "repeated-ids"
