"""Reranked searches through the proxy against real clusters, with the official clients."""
from __future__ import annotations

import json

import orjson
import pytest

from rerank.ranking import Fusion, rank
from rerank.registry import load_scorer
from rerank.spec import BiEncoderSpec
from rerank.text import TextConfig, build_document_text
from tests.integration.conftest import WINDOW, raw, without_took
from tests.proxyrunner import MINILM

pytestmark = pytest.mark.integration

QUERY = "vitamin D deficiency and bone fractures in older adults"
TEXT = TextConfig(fields=["title", "text"], max_tokens=256)


@pytest.fixture(scope="module")
def minilm():
    return load_scorer("minilm", BiEncoderSpec(**MINILM))


def match(query: str = QUERY) -> dict:
    return {"multi_match": {"query": query, "fields": ["title", "text"]}}


def model_order(target, minilm, query: str = QUERY, window: int = WINDOW) -> list[str]:
    """The window ranked by scoring the cluster's own top hits with the model directly, without the proxy."""
    hits = target.search(target.direct, query=match(query), size=window)["hits"]["hits"]
    scores = minilm.score(query, [build_document_text(h["_source"], TEXT) for h in hits])
    ranked = sorted(range(len(hits)), key=lambda i: -scores[i])
    return [hits[i]["_id"] for i in ranked]


def test_reranked_search_returns_the_window_in_the_models_order(target, minilm):
    response = target.search(target.proxy, query=match(), size=WINDOW)
    assert [h["_id"] for h in response["hits"]["hits"]] == model_order(target, minilm)
    headers = raw("POST", f"{target.proxy}/scifact/_search", orjson.dumps({"query": match()})).headers
    assert (headers["X-Rerank-Status"], headers["X-Rerank-Variant"]) == ("reranked", "control")
    assert float(headers["X-Rerank-Took-Ms"]) > 0
    scores = [h["_score"] for h in response["hits"]["hits"]]
    assert scores == sorted(scores, reverse=True) and response["hits"]["max_score"] == scores[0]


def test_paging_gives_the_reranked_window_then_the_tail_without_repeats_or_gaps(target, minilm):
    direct = target.search(target.direct, query=match(), size=63)
    expected = model_order(target, minilm) + [h["_id"] for h in direct["hits"]["hits"][WINDOW:]]
    seen = []
    for start in range(0, 63, 7):  # pages straddle the window's end (14-20 | 21-27)
        page = target.search(target.proxy, query=match(), size=7, **{"from": start})
        seen += [h["_id"] for h in page["hits"]["hits"]]
    assert seen == expected and len(set(seen)) == 63


def test_total_aggregations_and_highlight_are_the_clusters(target):
    body = {
        "query": match(),
        "size": 5,
        "aggs": {"long_titles": {"filter": {"match": {"title": "bone"}}}},
        "highlight": {"fields": {"title": {}}},
    }
    via_proxy = target.search(target.proxy, **body)
    direct = target.search(target.direct, **body)
    assert via_proxy["hits"]["total"] == direct["hits"]["total"]
    assert via_proxy["aggregations"] == direct["aggregations"]
    window = target.search(target.direct, **{**body, "size": WINDOW})
    direct_by_id = {h["_id"]: h for h in window["hits"]["hits"]}
    for hit in via_proxy["hits"]["hits"]:
        assert hit.get("highlight") == direct_by_id[hit["_id"]].get("highlight")


def test_rerank_off_header_gives_the_clusters_bytes(target):
    body = orjson.dumps({"query": match(), "size": 10})
    direct = raw("POST", f"{target.direct}/scifact/_search", body)
    proxied = raw("POST", f"{target.proxy}/scifact/_search", body, {"X-Rerank": "off"})
    assert proxied.status == direct.status == 200
    assert without_took(proxied.body) == without_took(direct.body)
    assert proxied.headers["X-Rerank-Status"] == "skipped; reason=header-off"
    assert proxied.headers["Content-Type"] == direct.headers["Content-Type"]


@pytest.mark.parametrize(
    "path,body,reason",
    [
        ("/scifact/_search", {"query": {"match": {"title": "cancer"}}, "size": 0, "aggs": {"n": {"value_count": {"field": "_index"}}}}, "size-0"),
        ("/scifact/_search", {"query": {"match": {"title": "cancer"}}, "sort": ["_doc"]}, "sort"),
        ("/scifact/_search", {"query": {"match": {"title": "cancer"}}, "sort": [{"_score": "desc"}, "_doc"], "search_after": [1.0, 1]}, "search-after"),
        ("/scifact/_search", {"query": {"match_all": {}}}, "no-query-text"),
        ("/scifact/_search", {"query": {"match": {"title": "cancer"}}, "from": WINDOW, "size": 5}, "page-past-window"),
        ("/scifact/_count", {"query": {"match": {"title": "cancer"}}}, None),
    ],
)
def test_skipped_searches_are_byte_identical_to_the_cluster(target, path, body, reason):
    data = orjson.dumps(body)
    direct = raw("POST", target.direct + path, data)
    proxied = raw("POST", target.proxy + path, data)
    assert (proxied.status, without_took(proxied.body)) == (direct.status, without_took(direct.body))
    assert proxied.headers.get("X-Rerank-Status") == (f"skipped; reason={reason}" if reason else None)


def test_unconfigured_search_through_a_disabled_rule_is_byte_identical(target):
    assert raw("PUT", f"{target.direct}/plain-docs/_doc/1?refresh=true", b'{"t": "hello world"}').status in (200, 201)
    body = orjson.dumps({"query": {"match": {"t": "hello"}}})
    direct = raw("POST", f"{target.direct}/plain-docs/_search", body)
    proxied = raw("POST", f"{target.proxy}/plain-docs/_search", body)
    assert without_took(proxied.body) == without_took(direct.body)
    assert proxied.headers["X-Rerank-Status"] == "skipped; reason=disabled"


@pytest.mark.parametrize(
    "params,body",
    [
        ({"filter_path": "hits.hits._id,hits.hits._score,hits.total"}, {}),
        ({"filter_path": "-hits.hits._source,took"}, {}),
        ({}, {"_source": False}),
        ({}, {"_source": ["title"]}),
        ({"_source_includes": "tit*"}, {}),
        ({"_source_excludes": "text"}, {}),
        ({"_source": "false"}, {"_source": True}),
        ({}, {"stored_fields": ["title"]}),
        ({}, {"fields": ["title"], "_source": False}),
        ({}, {"_source": {"includes": ["t*"], "excludes": ["text"]}}),
        ({"rest_total_hits_as_int": "true"}, {}),
        ({"filter_path": "hits.hits._source.title", "_source_excludes": "text"}, {}),
        ({"filter_path": "aggregations.**.value", "typed_keys": "true"}, {"aggs": {"n": {"value_count": {"field": "_index"}}}}),
    ],
)
def test_client_view_options_give_exactly_the_clusters_shape(target, params, body):
    via_proxy = target.search(target.proxy, params=params, query=match(), size=10, **body)
    direct = target.search(target.direct, params=params, query=match(), size=WINDOW, **body)
    direct_hits = {h["_id"]: h for h in direct.get("hits", {}).get("hits", []) if "_id" in h}

    def strip(hit: dict) -> dict:
        return {k: v for k, v in hit.items() if k != "_score"}

    assert via_proxy.keys() == direct.keys()
    if "hits" in direct:
        assert via_proxy["hits"].keys() == direct["hits"].keys()
        for hit in via_proxy["hits"].get("hits", []):
            if "_id" in hit:
                assert strip(hit) == strip(direct_hits[hit["_id"]])
            else:
                assert hit.keys() == direct["hits"]["hits"][0].keys()
    if "aggregations" in direct:
        assert via_proxy["aggregations"] == direct["aggregations"]


def test_explain_header_adds_per_hit_detail_the_clients_still_parse(target):
    hits = target.search(target.proxy, headers={"X-Rerank-Explain": "true"}, query=match(), size=3)["hits"]["hits"]
    for hit in hits:
        fields = hit["fields"]
        assert fields["_rerank.score"] == [hit["_score"]]
        assert fields["_rerank.cluster_rank"][0] >= 1 and isinstance(fields["_rerank.cluster_score"][0], float)


def test_msearch_reranks_each_item_with_its_own_query(target, minilm):
    other = "smoking and lung cancer risk"
    searches = [
        {"index": "scifact"}, {"query": match(), "size": WINDOW},
        {"index": "scifact"}, {"query": match(other), "size": WINDOW},
        {"index": "scifact"}, {"query": match(other), "size": 3, "sort": ["_doc"]},
    ]
    client = target.client(target.proxy)
    result = client.msearch(searches=searches) if target.flavor == "elasticsearch" else client.msearch(body=searches)
    first, second, third = result["responses"]
    assert [h["_id"] for h in first["hits"]["hits"]] == model_order(target, minilm)
    assert [h["_id"] for h in second["hits"]["hits"]] == model_order(target, minilm, other)
    by_doc = target.search(target.direct, query=match(other), size=3, sort=["_doc"])
    assert [h["_id"] for h in third["hits"]["hits"]] == [h["_id"] for h in by_doc["hits"]["hits"]]
    ndjson = b"".join(orjson.dumps(line) + b"\n" for line in searches)
    status = raw("POST", f"{target.proxy}/_msearch", ndjson, {"Content-Type": "application/x-ndjson"})
    assert status.headers["X-Rerank-Status"] == "reranked, reranked, skipped; reason=sort"


def test_variant_header_applies_its_window(target, minilm):
    response = target.search(target.proxy, headers={"X-Rerank-Variant": "small"}, query=match(), size=10)
    direct = target.search(target.direct, query=match(), size=10)
    top5 = model_order(target, minilm, window=5)
    assert [h["_id"] for h in response["hits"]["hits"]] == top5 + [h["_id"] for h in direct["hits"]["hits"][5:]]
    headers = raw("POST", f"{target.proxy}/scifact/_search", orjson.dumps({"query": match()}),
                  {"X-Rerank-Variant": "small"}).headers
    assert headers["X-Rerank-Variant"] == "small"


def test_linear_fusion_variant_orders_by_the_fused_score(target, minilm):
    response = target.search(target.proxy, headers={"X-Rerank-Variant": "fused"}, query=match(), size=WINDOW)
    hits = target.search(target.direct, query=match(), size=WINDOW)["hits"]["hits"]
    model = minilm.score(QUERY, [build_document_text(h["_source"], TEXT) for h in hits])
    expected = rank([h["_score"] for h in hits], model, Fusion(mode="linear", weight=0.5))
    assert [h["_id"] for h in response["hits"]["hits"]] == [hits[r.position]["_id"] for r in expected]
    assert [h["_score"] for h in response["hits"]["hits"]] == pytest.approx([r.score for r in expected], abs=1e-4)


def test_unknown_variant_is_a_clear_es_style_error(target):
    proxied = raw("POST", f"{target.proxy}/scifact/_search", orjson.dumps({"query": match()}),
                  {"X-Rerank-Variant": "nope"})
    error = json.loads(proxied.body)
    assert proxied.status == 400 and error["error"]["type"] == "illegal_argument_exception"
    assert "nope" in error["error"]["reason"]


def test_query_header_overrides_the_query_text(target, minilm):
    response = target.search(target.proxy, headers={"X-Rerank-Query": "lung cancer"}, query=match(), size=WINDOW)
    direct = target.search(target.direct, query=match(), size=WINDOW)["hits"]["hits"]
    scores = minilm.score("lung cancer", [build_document_text(h["_source"], TEXT) for h in direct])
    expected = [direct[i]["_id"] for i in sorted(range(len(direct)), key=lambda i: -scores[i])]
    assert [h["_id"] for h in response["hits"]["hits"]] == expected


def test_q_parameter_search_is_reranked(target, minilm):
    response = raw("GET", f"{target.proxy}/scifact/_search?q=vitamin%20D%20bone&size={WINDOW}")
    assert response.headers["X-Rerank-Status"] == "reranked"
    assert len(json.loads(response.body)["hits"]["hits"]) == WINDOW


def test_compressed_requests_and_responses_are_reranked(target, minilm):
    client = target.client(target.proxy, http_compress=True)
    body = {"query": match(), "size": WINDOW}
    response = client.search(index="scifact", **body) if target.flavor == "elasticsearch" else \
        client.search(index="scifact", body=body)
    assert [h["_id"] for h in response["hits"]["hits"]] == model_order(target, minilm)


async def test_async_clients_get_reranked_search_and_msearch(target, minilm):
    client = target.async_client(target.proxy)
    try:
        body, searches = {"query": match(), "size": WINDOW}, [{"index": "scifact"}, {"query": match(), "size": WINDOW}]
        if target.flavor == "elasticsearch":
            response = await client.search(index="scifact", **body)
            batch = await client.msearch(searches=searches)
        else:
            response = await client.search(index="scifact", body=body)
            batch = await client.msearch(body=searches)
    finally:
        await client.close()
    expected = model_order(target, minilm)
    assert [h["_id"] for h in response["hits"]["hits"]] == expected
    assert [h["_id"] for h in batch["responses"][0]["hits"]["hits"]] == expected


def test_malformed_json_gets_the_clusters_own_error(target):
    body = b'{"query": {"match": '
    direct = raw("POST", f"{target.direct}/scifact/_search", body)
    proxied = raw("POST", f"{target.proxy}/scifact/_search", body)
    assert (proxied.status, proxied.body) == (direct.status, direct.body)
    assert proxied.status == 400


def test_cluster_errors_pass_through_as_they_are(target):
    body = orjson.dumps({"query": match()})
    direct = raw("POST", f"{target.direct}/no-such-index/_search", body)
    proxied = raw("POST", f"{target.proxy}/no-such-index/_search", body)
    assert (proxied.status, proxied.body) == (direct.status, direct.body) and direct.status == 404



def test_an_alias_resolves_to_its_indexs_rule(target, minilm):
    """`scifact-alias` has no rule of its own; the proxy asks the cluster and applies the `scifact` rule."""
    actions = orjson.dumps({"actions": [{"add": {"index": "scifact", "alias": "scifact-alias"}}]})
    assert raw("POST", f"{target.direct}/_aliases", actions).status == 200
    body = orjson.dumps({"query": match(), "size": WINDOW})
    proxied = raw("POST", f"{target.proxy}/scifact-alias/_search", body)
    assert proxied.headers["X-Rerank-Status"] == "reranked"
    assert [h["_id"] for h in orjson.loads(proxied.body)["hits"]["hits"]] == model_order(target, minilm)


# ---- search templates (OpenSearch: its lang-mustache module is on Maven Central, Elasticsearch's is not) -------

TEMPLATE = '{"query": {"multi_match": {"query": "{{query_string}}", "fields": ["title", "text"]}}, ' \
           '"from": {{from}}, "size": {{size}}}'


@pytest.fixture
def os_template(os_target):
    """The OpenSearch target with a stored mustache template whose params carry the query text and the page."""
    client = os_target.client(os_target.direct)
    client.put_script(id="scifact-match", body={"script": {"lang": "mustache", "source": TEMPLATE}})
    yield os_target
    client.delete_script(id="scifact-match")


def test_search_template_is_reranked_with_the_query_from_its_params(os_template, minilm):
    client = os_template.client(os_template.proxy)
    body = {"id": "scifact-match", "params": {"query_string": QUERY, "from": 0, "size": WINDOW}}
    response = client.search_template(index="scifact", body=body)
    assert [h["_id"] for h in response["hits"]["hits"]] == model_order(os_template, minilm)
    status = raw("POST", f"{os_template.proxy}/scifact/_search/template", orjson.dumps(body))
    assert status.headers["X-Rerank-Status"] == "reranked"


def test_search_template_pages_through_the_reranked_window_then_the_tail(os_template, minilm):
    client = os_template.client(os_template.proxy)
    direct = os_template.search(os_template.direct, query=match(), size=35)
    expected = model_order(os_template, minilm) + [h["_id"] for h in direct["hits"]["hits"][WINDOW:]]
    seen = []
    for start in range(0, 35, 7):
        params = {"query_string": QUERY, "from": start, "size": 7}
        page = client.search_template(index="scifact", body={"id": "scifact-match", "params": params})
        seen += [h["_id"] for h in page["hits"]["hits"]]
    assert seen == expected


def test_msearch_template_reranks_each_item_with_its_own_params(os_template, minilm):
    other = "smoking and lung cancer risk"
    searches = [
        {"index": "scifact"}, {"id": "scifact-match", "params": {"query_string": QUERY, "from": 0, "size": WINDOW}},
        {"index": "scifact"}, {"id": "scifact-match", "params": {"query_string": other, "from": 0, "size": WINDOW}},
    ]
    result = os_template.client(os_template.proxy).msearch_template(body=searches)
    first, second = result["responses"]
    assert [h["_id"] for h in first["hits"]["hits"]] == model_order(os_template, minilm)
    assert [h["_id"] for h in second["hits"]["hits"]] == model_order(os_template, minilm, other)


def test_search_template_with_rerank_off_is_the_clusters_bytes(os_template):
    body = orjson.dumps({"id": "scifact-match", "params": {"query_string": QUERY, "from": 0, "size": 10}})
    direct = raw("POST", f"{os_template.direct}/scifact/_search/template", body)
    proxied = raw("POST", f"{os_template.proxy}/scifact/_search/template", body, {"X-Rerank": "off"})
    assert proxied.status == direct.status == 200
    assert without_took(proxied.body) == without_took(direct.body)
