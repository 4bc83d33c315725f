"""The `index` label of the search metrics: the allow-list's entries and `_other`, so its values are bounded by the
config, never by the indices a cluster has."""
from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from proxy import metrics
from proxy.config import ConfigError, parse_config
from proxy.metrics import index_label, split_status
from proxy.resolve import IndexResolver
from proxy.search import RequestOptions, finish, plan_search

ALLOWED = ("products", "logs-*", "_all")


@pytest.mark.parametrize(("expression", "label"), [
    ("products", "products"),
    ("products-eu", "_other"),
    ("logs-2025.01.02", "logs-*"),  # a pattern labels its indices with itself: one series, however many days
    ("logs-a,logs-b", "logs-*"),
    ("logs-a,products", "_other"),  # no one entry names them all
    ("orders", "_other"),
    (None, "_all"),
    ("", "_all"),
    ("remote:products", "_other"),
])
def test_the_label_is_an_allow_list_entry_or_other(expression, label):
    assert index_label(ALLOWED, expression) == label


def test_without_an_allow_list_every_index_is_other():
    assert {index_label((), name) for name in ("products", None, "logs-1")} == {"_other"}


def test_an_exact_entry_is_not_read_as_a_pattern_only():
    assert index_label(("shop[1]",), "shop[1]") == "shop[1]"  # fnmatch would read [1] as a set


@pytest.mark.parametrize(("status", "split"), [
    ("reranked", ("reranked", "")), ("skipped; reason=sort", ("skipped", "sort")),
    ("fallback; reason=deadline", ("fallback", "deadline")), ("partial; reranked=7", ("partial", "")),
    ("refused; reason=body-too-large", ("refused", "body-too-large")),
])
def test_a_status_splits_into_outcome_and_reason(status, split):
    assert split_status(status) == split


def test_the_allow_list_is_read_from_the_config():
    models = {"m": {"backend": "bi-encoder", "source": "x"}}
    assert parse_config({"models": models, "metrics": {"index_labels": "products"}}).metrics.index_labels == [
        "products"]
    with pytest.raises(ConfigError, match="metrics.labels: Extra inputs"):
        parse_config({"models": models, "metrics": {"labels": ["a"]}})


def searches(outcome: str, reason: str, index: str) -> float:
    return REGISTRY.get_sample_value("rerank_proxy_searches_total", {
        "outcome": outcome, "reason": reason, "variant": "control", "index": index}) or 0.0


def test_a_search_is_counted_under_its_label():
    before = searches("skipped", "sort", "logs-*")
    metrics.record_search("skipped; reason=sort", "control", index_label(ALLOWED, "logs-7"))
    assert searches("skipped", "sort", "logs-*") == before + 1


class _Failing:
    async def score(self, model, query, docs, timeout_s, timing=None):
        raise RuntimeError("the model broke")


def test_a_fallback_is_counted_under_the_searchs_label():
    config = parse_config({
        "models": {"m": {"backend": "bi-encoder", "source": "x"}},
        "metrics": {"index_labels": ["logs-*"]},
    })

    async def no_aliases(name):
        return []

    def fallbacks() -> float:
        return REGISTRY.get_sample_value("rerank_proxy_fallbacks_total", {
            "model": "m", "reason": "model-error", "index": "logs-*"}) or 0.0

    options = RequestOptions(force=None, variant="control", query_override=None, explain=False)
    body = {"query": {"match": {"text": "protein folding"}}}
    plan = asyncio.run(plan_search(config, IndexResolver(config, no_aliases), "logs-9", body, [], options))
    assert plan.index_label == "logs-*"
    response = {"hits": {"hits": [{"_id": "1", "_score": 1.0, "_source": {"text": "a"}}]}}
    before = fallbacks()
    outcome = asyncio.run(finish(plan, response, _Failing(), options, opensearch=False))
    assert outcome.status == "fallback; reason=model-error"
    assert fallbacks() == before + 1
