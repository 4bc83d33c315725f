"""Everything that is not a reranked search reaches the client exactly as the cluster sent it."""
from __future__ import annotations

import gzip
import uuid

import orjson
import pytest

from tests.integration.conftest import raw, without_took

pytestmark = pytest.mark.integration

# Headers the cluster sends that must arrive unchanged (and the proxy must not add Date/Server of its own).
COMPARED_HEADERS = ("Content-Type", "Content-Length", "Content-Encoding", "X-Elastic-Product", "Date", "Server")


def _identity(body: bytes) -> bytes:
    return body


def same(target, method: str, path: str, body: bytes | None = None, headers: dict | None = None, normalise=_identity):
    direct = raw(method, target.direct + path, body, headers)
    proxied = raw(method, target.proxy + path, body, headers)
    assert proxied.status == direct.status, proxied.body[:300]
    assert normalise(proxied.body) == normalise(direct.body)
    for name in COMPARED_HEADERS:
        if name == "Content-Length" and normalise is not _identity:
            continue  # two answers that differ in `took` or a counter may differ in length too
        assert proxied.headers.get(name) == direct.headers.get(name), name
    if "_search" not in path:
        assert "X-Rerank-Status" not in proxied.headers
    return proxied


def test_index_lifecycle_bulk_get_count_cat_are_byte_identical(target):
    for base, name in ((target.direct, "direct"), (target.proxy, "proxied")):
        index = f"pt-{name}-{uuid.uuid4().hex[:6]}"
        created = raw("PUT", f"{base}/{index}", orjson.dumps({"settings": {"number_of_replicas": 0}}))
        assert created.status == 200
        assert orjson.loads(created.body) == {"acknowledged": True, "shards_acknowledged": True, "index": index}
        raw("DELETE", f"{base}/{index}")
    index = f"pt-{uuid.uuid4().hex[:8]}"
    raw("PUT", f"{target.direct}/{index}", orjson.dumps({"settings": {"number_of_replicas": 0}}))
    try:
        bulk = b"".join(
            orjson.dumps({"index": {"_id": str(i)}}) + b"\n" + orjson.dumps({"n": i, "t": f"doc {i}"}) + b"\n"
            for i in range(50)
        )
        response = raw("POST", f"{target.proxy}/{index}/_bulk?refresh=true", bulk,
                       {"Content-Type": "application/x-ndjson"})
        assert response.status == 200 and orjson.loads(response.body)["errors"] is False
        same(target, "GET", f"/{index}/_doc/7")
        same(target, "HEAD", f"/{index}/_doc/7")
        same(target, "GET", f"/{index}/_doc/missing")
        same(target, "GET", f"/{index}/_count")
        same(target, "POST", f"/{index}/_count", orjson.dumps({"query": {"range": {"n": {"gte": 10}}}}))
        same(target, "GET", f"/_cat/indices/{index}?h=index,docs.count")
        same(target, "GET", "/_cluster/health/" + index + "?level=indices",
             normalise=lambda b: b.replace(b'"number_of_pending_tasks":0', b""))
        same(target, "GET", f"/{index}/_mapping")
        same(target, "POST", f"/{index}/_search", orjson.dumps({"size": 0, "aggs": {"m": {"max": {"field": "n"}}}}),
             normalise=without_took)
    finally:
        assert raw("DELETE", f"{target.proxy}/{index}").status == 200


def test_compressed_responses_stay_compressed(target):
    direct = raw("GET", f"{target.direct}/scifact/_mapping", headers={"Accept-Encoding": "gzip"})
    proxied = same(target, "GET", "/scifact/_mapping", headers={"Accept-Encoding": "gzip"})
    assert proxied.headers.get("Content-Encoding") == direct.headers.get("Content-Encoding")
    if direct.headers.get("Content-Encoding") == "gzip":
        assert orjson.loads(gzip.decompress(proxied.body))


def test_gzip_request_bodies_pass_through(target):
    index = f"gz-{uuid.uuid4().hex[:8]}"
    body = gzip.compress(orjson.dumps({"t": "compressed body"}))
    response = raw("PUT", f"{target.proxy}/{index}/_doc/1?refresh=true", body,
                   {"Content-Encoding": "gzip", "Content-Type": "application/json"})
    try:
        assert response.status == 201
        assert orjson.loads(raw("GET", f"{target.direct}/{index}/_doc/1").body)["_source"] == {"t": "compressed body"}
    finally:
        raw("DELETE", f"{target.direct}/{index}")


def test_scroll_through_the_proxy_matches_direct(target):
    from_direct = [h["_id"] for h in scan(target.client(target.direct))]
    from_proxy = [h["_id"] for h in scan(target.client(target.proxy))]
    assert from_proxy == from_direct and len(from_proxy) > 100


def scan(client):
    if type(client).__module__.startswith("elasticsearch"):
        from elasticsearch.helpers import scan as helper
    else:
        from opensearchpy.helpers import scan as helper
    return list(helper(client, index="scifact", query={"query": {"match": {"title": "cancer"}}},
                       preserve_order=True, size=50))


def test_point_in_time_search_is_byte_identical(target):
    client = target.client(target.direct)
    if target.flavor == "elasticsearch":
        pit = client.open_point_in_time(index="scifact", keep_alive="1m")["id"]
        body = {"pit": {"id": pit, "keep_alive": "1m"}, "query": {"match": {"title": "cancer"}}, "size": 5}
    else:
        pit = client.create_pit(index="scifact", keep_alive="1m")["pit_id"]
        body = {"pit": {"id": pit, "keep_alive": "1m"}, "query": {"match": {"title": "cancer"}}, "size": 5}
    try:
        data = orjson.dumps(body)
        direct = raw("POST", f"{target.direct}/_search", data)
        proxied = raw("POST", f"{target.proxy}/_search", data)
        assert without_took(proxied.body) == without_took(direct.body)
        assert proxied.headers["X-Rerank-Status"] == "skipped; reason=pit"
    finally:
        if target.flavor == "elasticsearch":
            client.close_point_in_time(id=pit)
        else:
            client.delete_pit(body={"pit_id": [pit]})
