"""The relay's view of HTTP messages: what is kept byte for byte, what is dropped as per-connection, what is read."""
from __future__ import annotations

from proxy.search_endpoint import rewritten_content_type
from proxy.upstream import Endpoint, Upstream
from proxy.wire import Head, HeaderView, Reply, RequestHead, filtered_target, query_pairs


def _head(*headers: tuple[bytes, bytes]) -> RequestHead:
    head = RequestHead()
    for name, value in headers:
        head.add(name, value)
    head.finish()
    return head


def test_header_lines_are_kept_as_sent_in_order_and_case() -> None:
    head = _head((b"X-Opaque-Id", b"a  b"), (b"content-type", b"application/json"), (b"ACCEPT", b"*/*"))
    assert head.lines == [b"X-Opaque-Id: a  b\r\n", b"content-type: application/json\r\n", b"ACCEPT: */*\r\n"]


def test_hop_by_hop_headers_and_those_connection_names_are_dropped() -> None:
    head = _head(
        (b"Host", b"proxy:9201"), (b"Connection", b"keep-alive, X-Trace"), (b"X-Trace", b"1"), (b"TE", b"trailers"),
        (b"Keep-Alive", b"timeout=5"), (b"Proxy-Authorization", b"Basic eA=="), (b"Upgrade", b"h2c"),
        (b"X-Kept", b"yes"),
    )
    assert head.lines == [b"X-Kept: yes\r\n"]


def test_framing_is_read_not_forwarded() -> None:
    head = _head((b"Content-Length", b"12"), (b"Transfer-Encoding", b"chunked"))
    assert head.lines == [] and head.content_length == b"12" and head.chunked


def test_expect_100_continue_is_the_relays_but_other_expectations_go_to_the_cluster() -> None:
    assert _head((b"Expect", b"100-Continue")).lines == []
    assert _head((b"Expect", b"100-Continue")).expect == b"100-continue"
    assert _head((b"Expect", b"teapot")).lines == [b"Expect: teapot\r\n"]


def test_the_proxys_own_headers_are_read_but_never_forwarded() -> None:
    head = _head((b"X-Rerank", b"off"), (b"x-rerank-variant", b"small"), (b"X-Reranker-Team", b"kept"))
    assert head.header_view()["X-RERANK"] == "off" and head.header_view().get("X-Rerank-Variant") == "small"
    assert head.lines == [b"X-Reranker-Team: kept\r\n"]  # a client's header that merely starts alike is its own


def test_authorization_is_noticed_so_upstream_credentials_are_not_added() -> None:
    assert _head((b"Authorization", b"ApiKey x")).authorized
    assert not _head((b"X-Authorization", b"x")).authorized


def test_header_view_reads_the_first_of_repeated_headers_case_insensitively() -> None:
    view = HeaderView([(b"Accept", b"a"), (b"accept", b"b"), (b"X-\xe9", b"\xff")])
    assert view["ACCEPT"] == "a" and "accept" in view and view.get("x-\xe9") == "\xff" and len(view) == 2


def test_a_response_head_puts_content_length_back_where_it_stood() -> None:
    head = Head()
    for name, value in ((b"X-elastic-product", b"Elasticsearch"), (b"content-length", b"2"), (b"content-type", b"x")):
        head.add(name, value)
    assert head.lines_with_length() == [
        b"X-elastic-product: Elasticsearch\r\n", b"content-length: 2\r\n", b"content-type: x\r\n",
    ]
    assert head.get("Content-Type") == "x"


def test_query_pairs_decode_as_the_cluster_does() -> None:
    assert query_pairs(b"q=a+b&x=%2C&empty=&flag") == [("q", "a b"), ("x", ","), ("empty", ""), ("flag", "")]


def test_filtered_target_keeps_every_remaining_pair_byte_for_byte() -> None:
    raw_query = b"q=%ZZ&filter_path=hits.hits._id&routing=a%2Cb&size=3&pretty"
    keep = [("q", "%ZZ"), ("routing", "a,b"), ("pretty", "")]
    assert filtered_target(b"/%2e%2e/_search", raw_query, keep) == b"/%2e%2e/_search?q=%ZZ&routing=a%2Cb&pretty"


def test_filtered_target_drops_only_as_many_repeats_as_asked() -> None:
    assert filtered_target(b"/i/_search", b"a=1&a=1&b=2", [("a", "1")]) == b"/i/_search?a=1"
    assert filtered_target(b"/i/_search", b"size=1", []) == b"/i/_search"


def test_request_path_is_decoded_for_routing_only() -> None:
    head = RequestHead(target=b"/a%2Fb/_search?q=x")
    assert head.path == "/a/b/_search" and head.raw_path == b"/a%2Fb/_search" and head.raw_query == b"q=x"


def test_reply_states_its_length_and_says_close_when_asked() -> None:
    reply = Reply(404, b"Not Found", [b"content-type: application/json\r\n"], b"{}")
    assert reply.serialize("1.1", close=True) == (
        b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
    )
    assert reply.serialize(head_only=True).endswith(b"content-length: 2\r\n\r\n")


def test_upstream_request_head_carries_the_raw_target_and_the_upstreams_host() -> None:
    endpoint = Endpoint.parse("http://elastic:s3cret@es.internal:9200")
    head = Upstream._request_head(endpoint, "DELETE", b"/idx/_doc/..", [b"X-A: 1\r\n"], None, False, False)
    assert head.startswith(b"DELETE /idx/_doc/.. HTTP/1.1\r\nhost: es.internal:9200\r\nX-A: 1\r\n")
    assert b"authorization: Basic ZWxhc3RpYzpzM2NyZXQ=\r\n" in head and head.endswith(b"\r\n\r\n")
    own = Upstream._request_head(endpoint, "GET", b"/", [], None, False, True)
    assert b"authorization" not in own


def test_upstream_request_head_frames_bodies() -> None:
    endpoint = Endpoint.parse("http://127.0.0.1:9200")
    assert b"content-length: 5\r\n" in Upstream._request_head(endpoint, "PUT", b"/i", [], 5, False, False)
    assert b"transfer-encoding: chunked\r\n" in Upstream._request_head(endpoint, "PUT", b"/i", [], None, True, False)


def test_redacted_url_never_holds_credentials() -> None:
    assert Endpoint.parse("https://u:p%40ss@h:9243/base").redacted == "https://h:9243/base"


def test_a_rewritten_body_speaks_the_clients_api_version() -> None:
    compat = HeaderView([(b"Accept", b"application/vnd.elasticsearch+json; compatible-with=8")])
    assert rewritten_content_type(compat, ndjson=False) == b"application/vnd.elasticsearch+json; compatible-with=8"
    assert rewritten_content_type(compat, ndjson=True) == b"application/vnd.elasticsearch+x-ndjson; compatible-with=8"
    assert rewritten_content_type(HeaderView([]), ndjson=False) == b"application/json"
    assert rewritten_content_type(HeaderView([(b"Content-Type", b"application/json")]), ndjson=False) is None
