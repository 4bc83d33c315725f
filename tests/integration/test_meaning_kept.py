"""Searches whose meaning reranking would change get the cluster's own answer, and reranked ones keep every value.

Each case was found by running the clusters' own REST YAML suites and targeted probes through the proxy
(scripts/rest_suite.py): a request the proxy rewrote that the cluster then refused (`stored_fields: _none_`), orders
and scores the client asked the cluster for (a template's sort, `rescore`, `explain`, `profile`), and integers past
64 bits rounded on their way through.
"""
from __future__ import annotations

import orjson
import pytest

from tests.integration.conftest import raw, without_took

pytestmark = pytest.mark.integration

INDEX = "meaning-kept"
BIG = 12345678901234567890123  # past 64 bits: orjson alone reads it as a float
DOCS = [
    {"text": "heart attack risk in older adults", "n": 3, "big": BIG},
    {"text": "a heart attack and its treatment", "n": 1, "big": BIG},
    {"text": "attack of the heart: a review of treatments after a heart attack", "n": 2, "big": 7},
    {"text": "diet and heart disease", "n": 4, "big": BIG},
]
MATCH = {"match": {"text": "heart attack treatment"}}


def _load(url: str) -> None:
    raw("DELETE", f"{url}/{INDEX}")
    mapping = {"properties": {"text": {"type": "text"}, "n": {"type": "long"}, "big": {"type": "keyword"}}}
    assert raw("PUT", f"{url}/{INDEX}", orjson.dumps({"mappings": mapping})).status == 200
    lines = b"".join(orjson.dumps({"index": {"_id": str(i)}}) + b"\n" + _with_big(doc) + b"\n"
                     for i, doc in enumerate(DOCS, 1))
    bulk = raw("POST", f"{url}/{INDEX}/_bulk?refresh=true", lines, {"Content-Type": "application/x-ndjson"})
    assert bulk.status == 200 and b'"errors":false' in bulk.body


@pytest.fixture
def probe(target):
    _load(target.direct)
    yield target
    raw("DELETE", f"{target.direct}/{INDEX}")


@pytest.fixture
def os_probe(os_target):
    """OpenSearch alone: its lang-mustache module is on Maven Central, Elasticsearch's is not."""
    _load(os_target.direct)
    yield os_target
    raw("DELETE", f"{os_target.direct}/{INDEX}")


def _with_big(doc: dict) -> bytes:
    """The document as JSON, its big integer written exactly (orjson refuses to write it)."""
    return orjson.dumps({**doc, "big": 0}).replace(b'"big":0', b'"big":%d' % doc["big"])


def both(target, body: bytes, path: str = f"/{INDEX}/_search"):
    return raw("POST", f"{target.direct}{path}", body), raw("POST", f"{target.proxy}{path}", body)


def ids(answer) -> list[str]:
    return [hit["_id"] for hit in orjson.loads(answer.body)["hits"]["hits"]]


@pytest.mark.parametrize("body,path,reason", [
    ({"query": MATCH, "stored_fields": "_none_"}, f"/{INDEX}/_search", "stored-fields-none"),
    ({"query": MATCH}, f"/{INDEX}/_search?stored_fields=_none_", "stored-fields-none"),
    ({"query": MATCH, "explain": True}, f"/{INDEX}/_search", "explain"),
    ({"query": MATCH}, f"/{INDEX}/_search?explain", "explain"),
    ({"query": MATCH, "rescore": {"window_size": 10, "query": {"rescore_query": {"match": {"text": "diet"}}}}},
     f"/{INDEX}/_search", "rescore"),
])
def test_a_search_reranking_would_change_gets_the_clusters_bytes(probe, body, path, reason):
    direct, proxied = both(probe, orjson.dumps(body), path)
    assert proxied.headers["X-Rerank-Status"] == f"skipped; reason={reason}"
    assert direct.status == 200
    assert (proxied.status, without_took(proxied.body)) == (direct.status, without_took(direct.body))


def test_a_profiled_search_profiles_the_clients_request(probe):
    direct, proxied = both(probe, orjson.dumps({"query": MATCH, "profile": True}))
    assert proxied.headers["X-Rerank-Status"] == "skipped; reason=profile"
    assert ids(proxied) == ids(direct) and b'"profile"' in proxied.body


def test_integers_past_64_bits_reach_the_cluster_and_come_back_exact(probe):
    body = b'{"query":{"bool":{"must":%s,"filter":{"term":{"big":%d}}}}}' % (orjson.dumps(MATCH), BIG)
    direct, proxied = both(probe, body)
    assert proxied.headers["X-Rerank-Status"] == "reranked"
    assert sorted(ids(proxied)) == sorted(ids(direct)) == ["1", "2", "4"]  # the filter matched: the number went exact
    assert proxied.body.count(b'"big":%d' % BIG) == 3  # and came back as the cluster stored it, not as 1.23e+22


@pytest.mark.parametrize("source", [
    {"query": {"match": {"text": "{{query_string}}"}}, "sort": [{"n": "asc"}]},
    '{"query":{"match":{"text":"{{query_string}}"}},"sort":[{"n":"asc"}]}',
    '{"query":{"match":{"text":"{{query_string}}"}}{{#by_n}},"sort":[{"n":"asc"}]{{/by_n}}}',  # not JSON as it is
])
def test_an_inline_template_that_sorts_keeps_its_order(os_probe, source):
    body = orjson.dumps({"source": source, "params": {"query_string": "heart attack", "by_n": True}})
    direct, proxied = both(os_probe, body, f"/{INDEX}/_search/template")
    assert proxied.headers["X-Rerank-Status"] == "skipped; reason=sort"
    assert direct.status == 200 and ids(proxied) == ids(direct) == ["2", "3", "1", "4"]
