"""Hostile requests, sent byte for byte on a raw socket, get the cluster's own answer through the proxy.

Each case goes to the cluster directly and through the proxy; status and body (modulo `took` and the counters two
writes legitimately differ in) must be equal, on Elasticsearch and on OpenSearch.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import orjson
import pytest

from tests.integration.conftest import Target, without_took
from tests.rawhttp import RawConnection, RawResponse, exchange, request_bytes

pytestmark = pytest.mark.integration

JSON = [("Content-Type", "application/json")]
NDJSON = [("Content-Type", "application/x-ndjson")]
# Fields in which two otherwise identical writes differ.
_COUNTERS = re.compile(rb'"(_seq_no|_version|_primary_term)"\s*:\s*\d+')


def normalised(body: bytes) -> bytes:
    return _COUNTERS.sub(rb'"\1":0', without_took(body))


def both(target: Target, method: str, path: str, headers: list[tuple[str, str]] | None = None,
         body: bytes | None = None) -> tuple[RawResponse, RawResponse]:
    """The same bytes to the cluster, then through the proxy."""
    direct = exchange(target.direct, method, path, headers, body)
    proxied = exchange(target.proxy, method, path, headers, body)
    return direct, proxied


def assert_same(target: Target, method: str, path: str, headers: list[tuple[str, str]] | None = None,
                body: bytes | None = None) -> RawResponse:
    direct, proxied = both(target, method, path, headers, body)
    assert (proxied.status, normalised(proxied.body)) == (direct.status, normalised(direct.body))
    return proxied


@pytest.fixture
def index(target: Target) -> Iterator[str]:
    """A fresh index on the cluster holding doc `1`, deleted afterwards."""
    name = f"exact-{uuid.uuid4().hex[:8]}"
    created = exchange(target.direct, "PUT", f"/{name}", JSON,
                       b'{"settings":{"number_of_shards":1,"number_of_replicas":0}}')
    assert created.status == 200, created.body
    doc = exchange(target.direct, "PUT", f"/{name}/_doc/1?refresh=true", JSON, b'{"title":"protein","n":1}')
    assert doc.status == 201, doc.body
    yield name
    exchange(target.direct, "DELETE", f"/{name}")


def index_exists(target: Target, name: str) -> bool:
    return exchange(target.direct, "HEAD", f"/{name}").status == 200


# ---- dot segments -----------------------------------------------------------------------------------------------

def test_delete_doc_dot_dot_is_the_clusters_404_and_keeps_the_index(target: Target, index: str) -> None:
    assert_same(target, "DELETE", f"/{index}/_doc/..")
    assert index_exists(target, index)


def test_client_library_delete_of_id_dot_dot_keeps_the_index(target: Target, index: str) -> None:
    client = target.client(target.proxy)
    if target.flavor == "elasticsearch":
        from elasticsearch import NotFoundError
    else:
        from opensearchpy import NotFoundError
    with pytest.raises(NotFoundError):
        client.delete(index=index, id="..")
    assert index_exists(target, index)


@pytest.mark.parametrize("path", ["/%2e%2e/_search", "/%2E%2E/_search", "/./_search", "/idx/../_search"])
def test_dot_segments_in_a_search_path_are_not_resolved(target: Target, path: str) -> None:
    assert_same(target, "GET", path)


def test_dot_dot_doc_get_is_the_clusters_answer(target: Target, index: str) -> None:
    assert_same(target, "GET", f"/{index}/_doc/..")
    assert_same(target, "GET", f"/{index}/_doc/%2e%2e")


# ---- encoded separators, invalid escapes, odd paths -------------------------------------------------------------

@pytest.mark.parametrize("doc_id", ["a%3Fb", "a%23b", "a%2Fb", "a%3fb%3Dc"])
def test_encoded_separator_in_a_doc_id_reaches_the_cluster_encoded(target: Target, index: str, doc_id: str) -> None:
    assert_same(target, "GET", f"/{index}/_doc/{doc_id}")


def test_put_with_encoded_hash_in_the_id_writes_that_id(target: Target, index: str) -> None:
    written = exchange(target.proxy, "PUT", f"/{index}/_doc/a%23b?refresh=true", JSON, b'{"title":"hash"}')
    assert written.status == 201, written.body
    assert orjson.loads(written.body)["_id"] == "a#b"
    fetched = assert_same(target, "GET", f"/{index}/_doc/a%23b")
    assert orjson.loads(fetched.body)["_source"] == {"title": "hash"}
    assert exchange(target.direct, "GET", f"/{index}/_doc/a").status == 404


@pytest.mark.parametrize("suffix", ["%3Fx/_search", "%23x/_search", "%3Fsize=1/_search"])
def test_encoded_separator_in_an_index_name_is_the_clusters_answer(target: Target, index: str, suffix: str) -> None:
    assert_same(target, "GET", f"/{index}{suffix}")


@pytest.mark.parametrize("query", ["q=%ZZ", "q=%", "q=protein%2", "q=a%2Bb+c", "q=title:%70rotein"])
def test_query_string_escapes_are_relayed_as_sent(target: Target, index: str, query: str) -> None:
    assert_same(target, "GET", f"/{index}/_count?{query}")
    assert_same(target, "GET", f"/{index}/_search?{query}", [("X-Rerank", "off")])


@pytest.mark.parametrize("path", ["/x%23y/_search", "/x%3Fsize=1/_search", "/scifact%2Fx/_search",
                                  "/scifact,x%23y/_search", "/scifact,x%3Fy/_search", "/scifact,x%3Fsize=1/_search",
                                  "/sci%66act/_search?q=protein", "/scifact,%2e%2e/_search"])
def test_encoded_separator_in_a_reranked_search_path_is_the_clusters_answer(target: Target, path: str) -> None:
    body = b'{"query":{"match":{"title":"protein"}}}'
    direct, proxied = both(target, "POST", path, JSON + [("X-Rerank", "on")], body)
    assert proxied.status == direct.status
    if direct.status != 200:
        assert normalised(proxied.body) == normalised(direct.body)


@pytest.mark.parametrize("query", ["q=%ZZ", "q=%80", "_source=%80", "size=%ZZ"])
def test_invalid_escape_in_a_reranked_search_is_the_clusters_error(target: Target, query: str) -> None:
    assert_same(target, "GET", f"/scifact/_search?{query}", [("X-Rerank", "on")])


@pytest.mark.parametrize("path", ["//{i}//_doc/1", "/{i}//_doc/1", "/{i}/_doc//1", "/{i}/_doc/1;x=y",
                                  "/{i};v=1/_doc/1", "/{i}/_doc/1/", "/{i}/_doc/%31"])
def test_odd_paths_are_the_clusters_answer(target: Target, index: str, path: str) -> None:
    assert_same(target, "GET", path.format(i=index))


def test_duplicate_keys_in_a_reranked_search_body_are_refused_as_the_cluster_refuses_them(target: Target) -> None:
    body = b'{"size":3,"size":4,"query":{"match":{"title":"protein"}}}'
    proxied = assert_same(target, "POST", "/scifact/_search", JSON + [("X-Rerank", "on")], body)
    assert proxied.status == 400


# ---- Expect: 100-continue ---------------------------------------------------------------------------------------

EXPECT_WAIT_S = 0.5  # curl gives up waiting after 1 s and sends the body anyway


def put_with_expect(url: str, path: str, body: bytes) -> tuple[RawResponse, RawResponse]:
    """The interim (or early final) answer to the headers alone, then the final answer to the body."""
    headers = JSON + [("Expect", "100-continue"), ("Content-Length", str(len(body)))]
    with RawConnection(url) as conn:
        conn.send(request_bytes("PUT", path, headers))
        conn.sock.settimeout(EXPECT_WAIT_S)
        try:
            first = conn.response()
        except TimeoutError:
            raise AssertionError(f"no 100 Continue nor final answer {EXPECT_WAIT_S} s after the headers") from None
        conn.sock.settimeout(60)
        if first.status != 100:
            return first, first
        conn.send(body)
        return first, conn.response()


def test_expect_100_continue_is_answered_at_once(target: Target, index: str) -> None:
    body = orjson.dumps({"title": "expect", "text": "x" * 2048})
    direct_first, direct = put_with_expect(target.direct, f"/{index}/_doc/direct", body)
    first, final = put_with_expect(target.proxy, f"/{index}/_doc/proxied", body)
    assert direct_first.status == 100
    assert first.status in (100, direct.status)
    assert final.status == direct.status == 201
    assert normalised(final.body).replace(b"proxied", b"direct") == normalised(direct.body)


# ---- header limits ----------------------------------------------------------------------------------------------

def test_two_hundred_headers_are_accepted_like_the_cluster_does(target: Target, index: str) -> None:
    headers = [(f"X-Extra-{i}", f"value-{i}") for i in range(200)]
    proxied = assert_same(target, "GET", f"/{index}/_doc/1", headers)
    assert proxied.status == 200


def test_twenty_kb_header_gets_the_clusters_own_answer(target: Target, index: str) -> None:
    headers = [("X-Big", "v" * 20_000)]
    direct, proxied = both(target, "GET", f"/{index}/_doc/1", headers)
    assert proxied.status == direct.status
    assert normalised(proxied.body) == normalised(direct.body)


# ---- _msearch framing -------------------------------------------------------------------------------------------

H = b'{"index":"scifact"}'
Q = b'{"query":{"match":{"title":"protein"}}}'
MSEARCH_FRAMINGS = {
    "no-trailing-newline": H + b"\n" + Q,
    "leading-empty-header": b"\n" + Q + b"\n",
    "leading-empty-line-then-pair": b"\n" + H + b"\n" + Q + b"\n",
    "empty-header-between": H + b"\n" + Q + b"\n\n" + Q + b"\n",
    "blank-line-between-items": H + b"\n" + Q + b"\n\n" + H + b"\n" + Q + b"\n",
    "crlf": H + b"\r\n" + Q + b"\r\n\r\n" + Q + b"\r\n",
    "dangling-header": H + b"\n" + Q + b"\n" + H + b"\n",
    "extra-trailing-newline": H + b"\n" + Q + b"\n\n",
    "empty-body": H + b"\n\n",
    "duplicate-key-body": H + b'\n{"size":2,"size":3,"query":{"match":{"title":"protein"}}}\n',
}


def msearch_shape(response: RawResponse) -> object:
    """What must agree when hits may be re-ordered: the status, each item's status, total and error type."""
    document = orjson.loads(response.body)
    if "responses" not in document:
        return response.status, document.get("error", {}).get("type"), document.get("error", {}).get("reason")
    return response.status, [
        (r.get("status"), r.get("hits", {}).get("total"), r.get("error", {}).get("type"))
        for r in document["responses"]
    ]


@pytest.mark.parametrize("framing", MSEARCH_FRAMINGS)
@pytest.mark.parametrize("rerank", ["on", "off"])
def test_msearch_framing_is_read_as_the_cluster_reads_it(target: Target, framing: str, rerank: str) -> None:
    data = MSEARCH_FRAMINGS[framing]
    for path in ("/_msearch", "/scifact/_msearch"):
        direct, proxied = both(target, "POST", path, NDJSON + [("X-Rerank", rerank)], data)
        assert msearch_shape(proxied) == msearch_shape(direct)
        if rerank == "off" or direct.status != 200:
            assert normalised(proxied.body) == normalised(direct.body)


def test_msearch_empty_header_between_items_is_reranked(target: Target) -> None:
    data = H + b"\n" + Q + b"\n\n" + Q + b"\n"
    proxied = exchange(target.proxy, "POST", "/scifact/_msearch", NDJSON + [("X-Rerank", "on")], data)
    assert proxied.status == 200
    assert proxied.header("X-Rerank-Status") == b"reranked, reranked"


# ---- official client, bodiless search with reranking on ---------------------------------------------------------

def test_elasticsearch_py_query_string_search_is_reranked(target: Target) -> None:
    if target.flavor != "elasticsearch":
        pytest.skip("compatible-with media types are Elasticsearch's")
    client = target.client(target.proxy).options(headers={"X-Rerank": "on"})
    response = client.search(index="scifact", q="protein")
    assert response.meta.status == 200
    assert response.meta.headers["X-Rerank-Status"] == "reranked"
    assert response["hits"]["hits"]


def test_compatible_with_media_type_on_a_reranked_search_is_kept(target: Target) -> None:
    if target.flavor != "elasticsearch":
        pytest.skip("compatible-with media types are Elasticsearch's")
    compat = [("Accept", "application/vnd.elasticsearch+json; compatible-with=8")]
    proxied = exchange(target.proxy, "GET", "/scifact/_search?q=protein", compat + [("X-Rerank", "on")])
    assert proxied.status == 200, proxied.body[:300]
    assert proxied.header("X-Rerank-Status") == b"reranked"
    direct = exchange(target.direct, "GET", "/scifact/_search?q=protein", compat)
    assert proxied.header("Content-Type") == direct.header("Content-Type")


# ---- connection handling ----------------------------------------------------------------------------------------

def _read_until_closed(url: str, data: bytes) -> bytes:
    """Sends `data` and reads until the server closes (these requests ask it to)."""
    import socket

    from tests.rawhttp import host_port

    with socket.create_connection(host_port(url), timeout=10) as sock:
        sock.sendall(data)
        received = []
        while chunk := sock.recv(65536):
            received.append(chunk)
    return b"".join(received)


@pytest.mark.parametrize("request_line", [
    b"GET /{index}/_doc/1 HTTP/1.0\r\n\r\n",
    b"GET /{index}/_doc/1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET /{index}/_doc/missing HTTP/1.0\r\nUser-Agent: curl/8\r\n\r\n",
])
def test_a_closing_request_gets_the_clusters_exact_bytes(target: Target, index: str, request_line: bytes) -> None:
    data = request_line.replace(b"{index}", index.encode())
    assert _read_until_closed(target.proxy, data) == _read_until_closed(target.direct, data)
