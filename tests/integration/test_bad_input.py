"""Bad input gets a defined answer: the cluster's own, or a clear Elasticsearch-style 4xx, never a 500 of the proxy.

Every case is sent byte for byte on a raw socket to the cluster and through the proxy, to an index the proxy reranks
(`scifact`, or a fresh index of the test's own, which the defaults rerank), and the two answers compared: the status
always, the body wherever the search is not reranked.

Not in the corpus: a body nested 5000 deep, and a bool query nested 1000 deep, to OpenSearch. Both kill an
OpenSearch 2.19 node (a StackOverflowError in its parser ends the JVM), with or without the proxy in between.
"""
from __future__ import annotations

import gzip
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from proxy.ndjson import dumps
from tests.integration.conftest import Target, proxy_config, without_took
from tests.proxyrunner import RunningProxy
from tests.rawhttp import RawConnection, RawResponse, exchange, host_port, request_bytes

pytestmark = pytest.mark.integration

JSON = [("Content-Type", "application/json")]
NDJSON = [("Content-Type", "application/x-ndjson")]
ON = [("X-Rerank", "on")]
QUERY = b'{"match":{"title":"protein"}}'
SEARCH = b'{"query":' + QUERY + b'}'


def both(target: Target, method: str, path: str, headers: list[tuple[str, str]] | None = None,
         body: bytes | None = None) -> tuple[RawResponse, RawResponse]:
    return exchange(target.direct, method, path, headers, body), exchange(target.proxy, method, path, headers, body)


def rerank_status(response: RawResponse) -> str:
    return (response.header("X-Rerank-Status") or b"").decode()


def assert_clusters_answer(direct: RawResponse, proxied: RawResponse) -> None:
    """The same status; the same body too unless the search was reranked (then only its order may differ)."""
    assert proxied.status == direct.status, (proxied.body[:300], direct.body[:300])
    assert proxied.status != 500
    if rerank_status(proxied) != "reranked":
        assert without_took(proxied.body) == without_took(direct.body)


def nesting(data: bytes) -> int:
    """The deepest nesting of objects and arrays (the bodies built here hold no brackets inside strings)."""
    deepest = level = 0
    for byte in data:
        if byte in b"{[":
            level += 1
            deepest = max(deepest, level)
        elif byte in b"}]":
            level -= 1
    return deepest


def nested(depth: int, leaf: bytes = b"{}") -> bytes:
    """An object `depth` levels deep: `{"k":{"k":...{}}}`."""
    return b'{"k":' * (depth - 1) + leaf + b"}" * (depth - 1)


@pytest.fixture
def fresh_index(target: Target) -> Iterator[Any]:
    """Creates indices on the cluster for one test (names the proxy's defaults rerank) and deletes them after."""
    created: list[str] = []

    def create(settings: dict[str, Any] | None = None, mappings: dict[str, Any] | None = None,
               docs: list[bytes] = ()) -> str:
        name = f"badinput-{uuid.uuid4().hex[:8]}"
        body = {"settings": {"number_of_shards": 1, "number_of_replicas": 0, **(settings or {})}}
        if mappings:
            body["mappings"] = mappings
        answer = exchange(target.direct, "PUT", f"/{name}", JSON, orjson.dumps(body))
        assert answer.status == 200, answer.body
        created.append(name)
        bulk = b"".join(b'{"index":{"_id":"%d"}}\n%s\n' % (i, doc) for i, doc in enumerate(docs))
        if bulk:
            answer = exchange(target.direct, "POST", f"/{name}/_bulk?refresh=true", NDJSON, bulk)
            assert answer.status == 200 and b'"errors":false' in answer.body, answer.body[:500]
        return name

    yield create
    for name in created:
        exchange(target.direct, "DELETE", f"/{name}")


# ---- nesting depth of the search body ---------------------------------------------------------------------------

def deep_meta_search(depth: int) -> bytes:
    """A search whose body is `depth` deep: the nesting is in an aggregation's `meta`, which both clusters read as a
    free-form object and echo back in the response."""
    body = b'{"query":' + QUERY + b',"aggs":{"a":{"max":{"field":"n"},"meta":' + nested(depth - 3) + b"}}}"
    assert nesting(body) == depth
    return body


@pytest.mark.parametrize("depth", [255, 256, 300, 1000, 1024, 1025, 1100, 5000])
def test_a_deeply_nested_search_body_gets_the_clusters_answer(target: Target, depth: int) -> None:
    if target.flavor == "opensearch" and depth > 1100:
        pytest.skip("a body this deep kills the OpenSearch 2.19 node itself (StackOverflowError)")
    body = deep_meta_search(depth)
    direct, proxied = both(target, "POST", "/scifact/_search", JSON + ON, body)
    assert_clusters_answer(direct, proxied)
    if direct.status == 200:
        cut = direct.body.index(b',"aggregations":')
        assert proxied.body[proxied.body.index(b',"aggregations":'):] == direct.body[cut:]
    if depth <= 1000 and direct.status == 200:  # what the proxy can parse and write it reranks
        assert rerank_status(proxied) == "reranked"


@pytest.mark.parametrize("depth", [30, 31, 300])
def test_deeply_nested_bool_queries_get_the_clusters_answer(target: Target, depth: int) -> None:
    query = QUERY
    for _ in range(depth - 1):
        query = b'{"bool":{"must":' + query + b"}}"
    body = b'{"query":' + query + b"}"
    direct, proxied = both(target, "POST", "/scifact/_search", JSON + ON, body)
    assert_clusters_answer(direct, proxied)


@pytest.mark.parametrize("depth", [300, 1100])
def test_deeply_nested_msearch_item_gets_the_clusters_answer(target: Target, depth: int) -> None:
    body = b'{"index":"scifact"}\n' + deep_meta_search(depth) + b"\n{}\n" + SEARCH + b"\n"
    direct, proxied = both(target, "POST", "/scifact/_msearch", NDJSON + ON, body)
    assert proxied.status == direct.status
    if depth > 1024:  # past what the proxy reads: relayed as it came
        assert rerank_status(proxied) == "skipped; reason=too-deep"
        assert without_took(proxied.body) == without_took(direct.body)
    else:
        assert rerank_status(proxied) == "reranked, reranked"
        assert [r.get("status") for r in orjson.loads(proxied.body)["responses"]] == \
            [r.get("status") for r in orjson.loads(direct.body)["responses"]] == [200, 200]


# ---- deeply nested stored documents -----------------------------------------------------------------------------

DEEP_MAPPING = {"properties": {"title": {"type": "text"}, "deep": {"type": "object", "enabled": False}}}


def deep_doc(depth: int) -> bytes:
    doc = b'{"title":"protein folding","deep":' + nested(depth - 1) + b"}"
    assert nesting(doc) == depth
    return doc


@pytest.mark.parametrize("depth", [300, 1000])
def test_a_reranked_hit_with_a_deeply_nested_source_is_answered(target: Target, fresh_index: Any,
                                                                depth: int) -> None:
    plain = [b'{"title":"protein %d"}' % i for i in range(5)]
    index = fresh_index(mappings=DEEP_MAPPING, docs=[deep_doc(depth), *plain])
    direct, proxied = both(target, "POST", f"/{index}/_search", JSON, SEARCH)
    assert direct.status == proxied.status == 200
    assert rerank_status(proxied) == "reranked"
    # Compared as written out (a plain `==` of two sources this deep would recurse past Python's limit).
    direct_hits = {h["_id"]: dumps(h["_source"]) for h in orjson.loads(direct.body)["hits"]["hits"]}
    proxied_hits = {h["_id"]: dumps(h["_source"]) for h in orjson.loads(proxied.body)["hits"]["hits"]}
    assert proxied_hits == direct_hits
    assert direct_hits["0"] == deep_doc(depth)


def test_a_response_too_deep_to_parse_is_the_clusters_answer_to_the_clients_own_request(
        target: Target, fresh_index: Any) -> None:
    """A depth-1000 source inside a top_hits inside 30 filter aggregations: the response is nested deeper than the
    proxy can read, so the client gets what the cluster answers its own request (its page, not the rerank window)."""
    index = fresh_index(mappings=DEEP_MAPPING, docs=[deep_doc(1000), *(b'{"title":"protein %d"}' % i
                                                                      for i in range(5))])
    aggs = b'{"t":{"top_hits":{"size":1,"sort":[{"_doc":"asc"}]}}}'
    for i in range(30):
        aggs = b'{"f%d":{"filter":{"match_all":{}},"aggs":%s}}' % (i, aggs)
    body = b'{"size":2,"query":' + QUERY + b',"aggs":' + aggs + b"}"
    direct, proxied = both(target, "POST", f"/{index}/_search", JSON, body)
    assert direct.status == proxied.status == 200
    assert nesting(direct.body) > 1024
    assert without_took(proxied.body) == without_took(direct.body)
    assert rerank_status(proxied) == "fallback; reason=unparseable"


def test_a_reranked_response_too_deep_to_filter_back_is_the_clusters_answer_to_the_clients_own_request(
        target: Target, fresh_index: Any) -> None:
    """The client's `_source` filter, re-applied by the proxy to the widened hits, walks every level of a depth-1000
    source (`**`): deeper than Python recurses. The client gets the cluster's answer to its own request."""
    index = fresh_index(mappings=DEEP_MAPPING, docs=[deep_doc(1000), *(b'{"title":"protein %d"}' % i
                                                                      for i in range(5))])
    body = b'{"_source":{"includes":["title","**.nothing"]},"query":' + QUERY + b"}"
    direct, proxied = both(target, "POST", f"/{index}/_search", JSON, body)
    assert direct.status == proxied.status == 200
    assert without_took(proxied.body) == without_took(direct.body)
    assert rerank_status(proxied) == "fallback; reason=unserialisable"


# ---- compressed bodies ------------------------------------------------------------------------------------------

CORRUPT_GZIP = gzip.compress(SEARCH)[:-6] + b"\x00\x01\x02\x03\x04\x05"
GZIP_CASES = {
    "truncated": gzip.compress(SEARCH)[:12],
    "bad-crc": CORRUPT_GZIP,
    "not-gzip": SEARCH,
    "empty": b"",
}


def answer_or_close(url: str, method: str, path: str, headers: list[tuple[str, str]],
                    body: bytes) -> RawResponse | None:
    """The answer, or None when the server closes the connection without one."""
    try:
        return exchange(url, method, path, headers, body)
    except ConnectionError:
        return None


def assert_cluster_closing_or_same(direct: RawResponse | None, proxied: RawResponse | None) -> None:
    """The cluster's answer; where the cluster closes without one (a gzip body it cannot inflate), the proxy, whose
    relay tells such a close from a broken cluster no better than any client, answers an Elasticsearch-style 502."""
    if direct is None:
        assert proxied is not None and proxied.status == 502, proxied
        assert orjson.loads(proxied.body)["status"] == 502
    else:
        assert proxied is not None and proxied.status == direct.status
        if rerank_status(proxied) != "reranked":
            assert without_took(proxied.body) == without_took(direct.body)


@pytest.mark.parametrize("case", GZIP_CASES)
def test_a_corrupt_gzip_search_body_gets_the_clusters_answer(target: Target, case: str) -> None:
    headers = JSON + ON + [("Content-Encoding", "gzip")]
    direct = answer_or_close(target.direct, "POST", "/scifact/_search", headers, GZIP_CASES[case])
    proxied = answer_or_close(target.proxy, "POST", "/scifact/_search", headers, GZIP_CASES[case])
    assert_cluster_closing_or_same(direct, proxied)
    if proxied is not None and proxied.status != 502:
        assert rerank_status(proxied).startswith("skipped; reason=")


@pytest.mark.parametrize("case", GZIP_CASES)
def test_a_corrupt_gzip_body_on_a_pass_through_request_gets_the_clusters_answer(target: Target, case: str) -> None:
    headers = JSON + [("Content-Encoding", "gzip")]
    direct = answer_or_close(target.direct, "POST", "/scifact/_count", headers, GZIP_CASES[case])
    proxied = answer_or_close(target.proxy, "POST", "/scifact/_count", headers, GZIP_CASES[case])
    assert_cluster_closing_or_same(direct, proxied)


def test_a_gzip_search_body_is_reranked(target: Target) -> None:
    headers = JSON + [("Content-Encoding", "gzip")]
    direct, proxied = both(target, "POST", "/scifact/_search", headers, gzip.compress(SEARCH))
    assert direct.status == proxied.status == 200
    assert rerank_status(proxied) == "reranked"


# ---- request lines the proxy does not relay ---------------------------------------------------------------------

@pytest.fixture
def other_host() -> Iterator[tuple[socket.socket, int]]:
    """A listening socket standing for "another host": nothing may connect to it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    yield listener, listener.getsockname()[1]
    listener.close()


def assert_never_contacted(listener: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        listener.accept()


def read_until_closed(url: str, data: bytes, timeout_s: float = 10) -> bytes:
    with socket.create_connection(host_port(url), timeout=timeout_s) as sock:
        sock.sendall(data)
        received = []
        try:
            while chunk := sock.recv(65536):
                received.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(received)


def test_options_star_gets_the_clusters_answer(target: Target) -> None:
    direct, proxied = both(target, "OPTIONS", "*")
    assert (proxied.status, proxied.body) == (direct.status, direct.body)
    assert proxied.header("Allow") == direct.header("Allow")


@pytest.mark.parametrize("request_line", [
    "GET http://127.0.0.1:{port}/_search HTTP/1.1",
    "GET http://127.0.0.1:{port}/scifact/_search?q=protein HTTP/1.1",
    "POST http://127.0.0.1:{port}/scifact/_doc HTTP/1.1",
    "CONNECT 127.0.0.1:{port} HTTP/1.1",
])
def test_a_request_for_another_host_is_refused_with_an_es_style_4xx(target: Target, other_host: Any,
                                                                    request_line: str) -> None:
    listener, port = other_host
    data = (request_line.format(port=port) + f"\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 2\r\n\r\n{{}}").encode()
    with RawConnection(target.proxy, timeout_s=10) as conn:
        conn.send(data)
        answer = conn.response()
    assert 400 <= answer.status < 500, answer.body[:300]
    error = orjson.loads(answer.body)
    assert error["status"] == answer.status and error["error"]["type"] == "illegal_argument_exception"
    assert_never_contacted(listener)


# ---- bytes that are not UTF-8 -----------------------------------------------------------------------------------

def test_non_utf8_opaque_id_is_relayed_on_searches_and_other_requests(target: Target) -> None:
    for method, path, body in (("POST", "/scifact/_search", SEARCH), ("GET", "/scifact/_count", None)):
        headers = JSON + [("X-Opaque-Id", "\xff\xfe")]
        direct, proxied = both(target, method, path, headers, body)
        assert proxied.status == direct.status == 200
        assert proxied.header("X-Opaque-Id") == direct.header("X-Opaque-Id")


@pytest.mark.parametrize("value", ["\xff\xfe", "prot\xe9ine", "protéine".encode().decode("latin-1")])
def test_a_rerank_query_header_in_any_bytes_is_used(target: Target, value: str) -> None:
    """UTF-8 where the bytes are UTF-8, else latin-1 (how Python's http.client writes a str header)."""
    direct, proxied = both(target, "POST", "/scifact/_search", JSON + [("X-Rerank-Query", value)], SEARCH)
    assert direct.status == proxied.status == 200
    assert rerank_status(proxied) == "reranked"


@pytest.mark.parametrize("query", ["q=%ff%fe", "q=prot%C3%A9in%ff", "%ff=1", "q=protein&filter_path=%ff",
                                   "q=protein&_source=%ff", "q=protein&size=%ff"])
def test_non_utf8_query_string_on_a_search_gets_the_clusters_answer(target: Target, query: str) -> None:
    direct, proxied = both(target, "GET", f"/scifact/_search?{query}", ON)
    assert_clusters_answer(direct, proxied)


@pytest.mark.parametrize("path", ["/scifact/_search?q=prot\xe9in", "/scifact/_search?q=\xff", "/scifact/_doc/\xe9"])
def test_a_raw_non_ascii_byte_in_the_target_gets_the_clusters_answer(target: Target, path: str) -> None:
    """The clusters take bytes past ASCII unencoded in a target (llhttp alone would refuse them)."""
    direct, proxied = both(target, "GET", path, ON)
    assert_clusters_answer(direct, proxied)


# ---- index.max_result_window ------------------------------------------------------------------------------------

PROTEIN_DOCS = [b'{"title":"protein %d","n":%d}' % (i, i) for i in range(8)]


def test_an_index_with_a_small_max_result_window_is_reranked_within_it(target: Target, fresh_index: Any) -> None:
    index = fresh_index(settings={"index.max_result_window": 5}, docs=PROTEIN_DOCS)
    body = b'{"size":3,"query":' + QUERY + b"}"
    direct, proxied = both(target, "POST", f"/{index}/_search", JSON, body)
    assert direct.status == proxied.status == 200, proxied.body[:300]
    assert rerank_status(proxied) == "reranked"
    assert len(orjson.loads(proxied.body)["hits"]["hits"]) == 3


@pytest.mark.parametrize("page", [b'"size":6', b'"from":3,"size":3', b'"from":5,"size":1'])
def test_a_page_past_max_result_window_gets_the_clusters_own_400(target: Target, fresh_index: Any,
                                                                 page: bytes) -> None:
    index = fresh_index(settings={"index.max_result_window": 5}, docs=PROTEIN_DOCS)
    body = b"{" + page + b',"query":' + QUERY + b"}"
    direct, proxied = both(target, "POST", f"/{index}/_search", JSON, body)
    assert direct.status == 400
    assert_clusters_answer(direct, proxied)


def test_several_indices_are_reranked_within_the_smallest_max_result_window(target: Target,
                                                                             fresh_index: Any) -> None:
    small = fresh_index(settings={"index.max_result_window": 4}, docs=PROTEIN_DOCS)
    large = fresh_index(docs=PROTEIN_DOCS)
    alias = f"{small}-alias"
    actions = {"actions": [{"add": {"index": small, "alias": alias}}, {"add": {"index": large, "alias": alias}}]}
    assert exchange(target.direct, "POST", "/_aliases", JSON, orjson.dumps(actions)).status == 200
    body = b'{"size":2,"query":' + QUERY + b"}"
    for path in (f"/{small},{large}/_search", f"/{alias}/_search", f"/{small[:-4]}*/_search"):
        direct, proxied = both(target, "POST", path, JSON, body)
        assert direct.status == proxied.status == 200
        document = orjson.loads(proxied.body)
        assert rerank_status(proxied) == "reranked" and document["_shards"]["failed"] == 0, proxied.body[:400]
        assert len(document["hits"]["hits"]) == 2


def test_an_msearch_item_on_a_small_max_result_window_index_is_reranked(target: Target, fresh_index: Any) -> None:
    index = fresh_index(settings={"index.max_result_window": 5}, docs=PROTEIN_DOCS)
    body = (b'{"index":"%s"}\n{"size":3,"query":%s}\n{"index":"%s"}\n{"size":6,"query":%s}\n'
            % (index.encode(), QUERY, index.encode(), QUERY))
    direct, proxied = both(target, "POST", "/_msearch", NDJSON, body)
    assert direct.status == proxied.status == 200
    assert [r["status"] for r in orjson.loads(proxied.body)["responses"]] == \
        [r["status"] for r in orjson.loads(direct.body)["responses"]] == [200, 400]
    assert rerank_status(proxied).startswith("reranked, skipped; reason=")


# ---- a search body over the limit -------------------------------------------------------------------------------

LIMIT = 1 << 20  # the test proxy's `max_search_body_bytes`; the clusters' own is 100 MB
CLUSTER_LIMIT = 100 * 1024 * 1024


@pytest.fixture(scope="module")
def limited_proxies() -> Iterator[dict[str, RunningProxy]]:
    running: dict[str, RunningProxy] = {}
    yield running
    for proxy in running.values():
        proxy.__exit__(None, None, None)


@pytest.fixture
def limited(target: Target, limited_proxies: dict[str, RunningProxy]) -> str:
    """The URL of a proxy in front of `target`'s cluster whose search bodies may be 1 MB at most."""
    if target.flavor not in limited_proxies:
        proxy = RunningProxy(proxy_config(target.direct, max_search_body_bytes=LIMIT))
        limited_proxies[target.flavor] = proxy.__enter__()
    return limited_proxies[target.flavor].url


def head_and_rest(answer: bytes) -> tuple[list[bytes], bytes]:
    head, _, rest = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), rest


@pytest.mark.parametrize("path", ["/scifact/_search", "/scifact/_msearch", "/_search/template"])
def test_a_search_declared_over_the_limit_is_answered_413_at_once(target: Target, limited: str, path: str) -> None:
    """The cluster's own answer to a body over its limit, before any of the body is sent."""
    def ask(url: str, length: int) -> bytes:
        head = request_bytes("POST", path, JSON + [("Content-Length", str(length))])
        with socket.create_connection(host_port(url), timeout=10) as sock:
            sock.sendall(head)
            sock.settimeout(10)
            return sock.recv(65536)

    direct_lines, direct_body = head_and_rest(ask(target.direct, CLUSTER_LIMIT + 1))
    proxied_lines, proxied_body = head_and_rest(ask(limited, LIMIT + 1))
    assert direct_lines[:2] == [b"HTTP/1.1 413 Request Entity Too Large", b"content-length: 0"]
    assert proxied_lines == direct_lines
    assert proxied_body == direct_body == b""


def test_after_a_413_the_body_is_read_and_dropped_and_the_connection_serves_on(limited: str) -> None:
    """As on the clusters: the client may go on sending the body it announced, then its next request."""
    with RawConnection(limited) as conn:
        conn.send(request_bytes("POST", "/scifact/_search", JSON + [("Content-Length", str(LIMIT + 1))]))
        assert conn.response().status == 413
        conn.send(b" " * (LIMIT + 1) + request_bytes("GET", "/scifact/_doc/nope"))
        assert conn.response().status == 404


def test_with_expect_100_continue_a_search_over_the_limit_gets_its_413_without_a_100(
        target: Target, limited: str) -> None:
    def ask(url: str, length: int) -> int:
        headers = JSON + [("Content-Length", str(length)), ("Expect", "100-continue")]
        with RawConnection(url, timeout_s=10) as conn:
            conn.send(request_bytes("POST", "/scifact/_search", headers))
            return conn.response().status  # the first answer: a `100 Continue` would come first

    assert ask(target.direct, CLUSTER_LIMIT + 1) == ask(limited, LIMIT + 1) == 413


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_a_search_asking_to_close_declared_over_the_limit_is_answered_as_the_cluster_does(
        target: Target, limited: str, version: str) -> None:
    def ask(url: str, length: int) -> tuple[bytes, set[bytes], bytes]:
        headers = JSON + [("Content-Length", str(length))] + ([("Connection", "close")] if version == "1.1" else [])
        data = request_bytes("POST", "/scifact/_search", headers).replace(b"HTTP/1.1", f"HTTP/{version}".encode(), 1)
        lines, body = head_and_rest(read_until_closed(url, data))
        return lines[0].split(b" ", 1)[1], set(lines[1:]), body  # the relay answers in the client's HTTP version

    direct = ask(target.direct, CLUSTER_LIMIT + 1)
    assert direct == (b"413 Request Entity Too Large", {b"content-length: 0", b"connection: close"}, b"")
    assert ask(limited, LIMIT + 1) == direct


def send_chunked_until_answered(url: str, path: str, total: int) -> tuple[bytes, int]:
    """Streams a chunked search body of `total` bytes (never ending) until the server answers; the answer read to
    the connection's end, and how many bytes had been sent by then."""
    answer: list[bytes] = []
    sent = [0]
    with socket.create_connection(host_port(url), timeout=30) as sock:
        def read() -> None:
            try:
                while chunk := sock.recv(65536):
                    answer.append(chunk)
            except OSError:
                pass

        reader = threading.Thread(target=read)
        sock.sendall(request_bytes("POST", path, JSON + [("Transfer-Encoding", "chunked")]))
        reader.start()
        chunk = b" " * 65536
        try:
            while sent[0] < total and not answer:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent[0] += len(chunk)
        except OSError:  # the server closed: what it answered is in `answer`
            pass
        reader.join(30)
    return b"".join(answer), sent[0]


def test_a_chunked_search_growing_past_the_limit_is_answered_413_and_closed(target: Target, limited: str) -> None:
    direct, _ = send_chunked_until_answered(target.direct, "/scifact/_search", CLUSTER_LIMIT + (16 << 20))
    proxied, sent = send_chunked_until_answered(limited, "/scifact/_search", 64 * LIMIT)
    assert direct == b"HTTP/1.1 413 Request Entity Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    assert proxied == direct
    assert sent < 64 * LIMIT  # answered while the body was still coming (it never ends)


def test_a_search_under_the_limit_is_reranked(target: Target, limited: str) -> None:
    body = SEARCH[:-1] + b" " * (LIMIT - len(SEARCH)) + b"}"
    assert len(body) == LIMIT
    proxied = exchange(limited, "POST", "/scifact/_search", JSON, body)
    assert proxied.status == 200 and rerank_status(proxied) == "reranked"


def test_a_non_search_over_the_search_limit_is_relayed(target: Target, limited: str) -> None:
    body = b'{"query":{"match_all":{}}' + b" " * LIMIT + b"}"
    direct = exchange(target.direct, "POST", "/scifact/_count", JSON, body)
    proxied = exchange(limited, "POST", "/scifact/_count", JSON, body)
    assert (proxied.status, proxied.body) == (direct.status, direct.body)


def test_a_compressed_search_inflating_past_the_limit_is_the_clusters_to_answer(target: Target, limited: str) -> None:
    """The limit is on what the proxy would hold: a small gzip body that inflates past it is relayed as sent."""
    body = gzip.compress(SEARCH[:-1] + b" " * (2 * LIMIT) + b"}")
    headers = JSON + [("Content-Encoding", "gzip")]
    direct = exchange(target.direct, "POST", "/scifact/_search", headers, body)
    proxied = exchange(limited, "POST", "/scifact/_search", headers, body)
    assert (proxied.status, without_took(proxied.body)) == (direct.status, without_took(direct.body)) == \
        (200, without_took(direct.body))
    assert rerank_status(proxied) == "skipped; reason=body-too-large"


def test_a_compressed_search_inflating_past_the_clusters_limit_gets_its_413(target: Target) -> None:
    body = gzip.compress(SEARCH[:-1] + b" " * CLUSTER_LIMIT + b"}")
    headers = JSON + [("Content-Encoding", "gzip")]
    direct, proxied = both(target, "POST", "/scifact/_search", headers, body)
    assert (proxied.status, proxied.body) == (direct.status, direct.body) == (413, b"")


# ---- malformed JSON and NDJSON ----------------------------------------------------------------------------------

BAD_BODIES = {
    "truncated": b'{"query":',
    "array": b'[{"query":{"match":{"title":"protein"}}}]',
    "empty-array": b"[]",
    "string": b'"protein"',
    "number": b"42",
    "null": b"null",
    "whitespace": b" \r\n\t ",
    "trailing-object": SEARCH + b'{"size":1}',
    "trailing-garbage": SEARCH + b"xyz",
    "duplicate-key": b'{"size":3,"size":4,"query":' + QUERY + b"}",
    "duplicate-nested-key": b'{"query":{"match":{"title":"protein","title":"cell"}}}',
    "invalid-utf8-in-string": b'{"query":{"match":{"title":"prot\xffein"}}}',
    "invalid-utf8-in-key": b'{"query":{"match":{"ti\xfftle":"protein"}}}',
    "lone-surrogate-escape": b'{"query":{"match":{"title":"protein \\ud800"}}}',
    "nul-byte": b'{"query":{"match":{"title":"prot\x00ein"}}}',
    "bom": b"\xef\xbb\xbf" + SEARCH,
    "nan": b'{"size":NaN,"query":' + QUERY + b"}",
    "huge-size": b'{"size":99999999999999999999,"query":' + QUERY + b"}",
    "float-size": b'{"size":3.0,"query":' + QUERY + b"}",
    "string-size": b'{"size":"3","query":' + QUERY + b"}",
    "negative-from": b'{"from":-1,"query":' + QUERY + b"}",
    "big-from": b'{"from":1e400,"query":' + QUERY + b"}",
    "single-quotes": b"{'query':{'match':{'title':'protein'}}}",
    "comment": b'{/* c */"query":' + QUERY + b"}",
    "unquoted-key": b'{query:' + QUERY + b"}",
}


@pytest.mark.parametrize("case", BAD_BODIES)
def test_a_malformed_search_body_gets_the_clusters_answer(target: Target, case: str) -> None:
    direct, proxied = both(target, "POST", "/scifact/_search", JSON + ON, BAD_BODIES[case])
    assert_clusters_answer(direct, proxied)


H = b'{"index":"scifact"}'
BAD_MSEARCH = {
    "bad-json-body": H + b'\n{"query":\n',
    "array-body": H + b"\n[]\n",
    "string-header": b'"scifact"\n' + SEARCH + b"\n",
    "array-header": b"[]\n" + SEARCH + b"\n",
    "duplicate-key-header": b'{"index":"scifact","index":"other"}\n' + SEARCH + b"\n",
    "invalid-utf8-body": H + b'\n{"query":{"match":{"title":"\xff"}}}\n',
    "trailing-garbage-body": H + b"\n" + SEARCH + b" x\n",
    "second-item-bad": H + b"\n" + SEARCH + b"\n" + H + b'\n{"query":}\n',
    "unknown-header-key": b'{"indexx":"scifact"}\n' + SEARCH + b"\n",
    "not-ndjson-at-all": b"\xff\xfe\x00\x01\n\n",
}


@pytest.mark.parametrize("case", BAD_MSEARCH)
def test_a_malformed_msearch_gets_the_clusters_answer(target: Target, case: str) -> None:
    direct, proxied = both(target, "POST", "/_msearch", NDJSON + ON, BAD_MSEARCH[case])
    assert proxied.status == direct.status != 500
    if direct.status != 200 or "reranked" not in rerank_status(proxied):
        assert without_took(proxied.body) == without_took(direct.body)
