"""Property tests against a recording upstream: what the proxy forwards, and what the client gets back.

- Pass-through: the request line the upstream receives is the client's, byte for byte, for any request-target
  (valid and invalid %-escapes, dot segments, `;`, `+`, empty segments) and method; the client's end-to-end headers
  arrive in order and case; the response the client gets is the upstream's (status line, headers in order and case,
  body), hop-by-hop headers aside.
- Reranked search: the path is the client's, and the query string is the client's minus the pairs whose (decoded)
  name is one of the proxy's view parameters, every other non-empty pair byte for byte and in order.
"""
from __future__ import annotations

import string
from collections.abc import Iterator
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tests.proxyrunner import MINILM, RunningProxy
from tests.rawhttp import RawConnection, RawResponse, exchange
from tests.recorder import DEFAULT_RESPONSE, Recorded, Recorder, http_response

VIEW_PARAMS = frozenset({"filter_path", "_source", "_source_includes", "_source_excludes", "from", "size"})
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
                        b"upgrade"})
METHODS = ("GET", "PUT", "POST", "DELETE", "HEAD")
SEARCH_BODY = b'{"query":{"match":{"title":"protein"}}}'
PROPERTY = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ---- request-targets --------------------------------------------------------------------------------------------

_PCHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"
_HEX = "0123456789abcdefABCDEF"
valid_escape = st.builds(lambda a, b: f"%{a}{b}", st.sampled_from(_HEX), st.sampled_from(_HEX))
invalid_escape = st.sampled_from(["%", "%Z", "%ZZ", "%G0", "%0", "%%", "%2", "%-1"])
notable = st.sampled_from(["%2e", "%2E", "%2f", "%2F", "%23", "%3F", "%3f", "%25", "%20", "+", ";", ";v=1", "%00"])
path_piece = st.one_of(st.sampled_from(list(_PCHARS)), valid_escape, invalid_escape, notable)
segment = st.one_of(
    st.sampled_from(["", ".", "..", "%2e%2e", ".%2e", "idx", "_doc", "_cat", "_cluster"]),
    st.lists(path_piece, min_size=1, max_size=8).map("".join),
)
paths = st.lists(segment, min_size=1, max_size=6).map(lambda s: "/" + "/".join(s))

_QCHARS = _PCHARS.replace("&", "").replace("=", "") + "/?"
query_piece = st.one_of(st.sampled_from(list(_QCHARS)), valid_escape, invalid_escape, notable)
query_text = st.lists(query_piece, max_size=6).map("".join)
query_pair = st.one_of(st.builds(lambda k, v: f"{k}={v}", query_text, query_text), query_text)
queries = st.lists(query_pair, max_size=5).map("&".join)


def routed_by_proxy(path: str) -> bool:
    """Paths the proxy handles itself (search routes, admin): the pass-through properties exclude them."""
    decoded = unquote_to_bytes(path).lower()
    return b"search" in decoded or b"_rerank_proxy" in decoded


# ---- the proxy in front of the recorder -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    with Recorder() as running:
        yield running


@pytest.fixture(scope="module")
def proxy_url(recorder: Recorder) -> Iterator[str]:
    config = {
        "upstreams": [recorder.url],
        "models": {"minilm": MINILM},
        "defaults": {"window": 5, "text": {"max_tokens": 64}, "timeout_ms": 60_000},
        "indices": [{"match": "idx", "text": {"fields": ["title", "text"]}}, {"match": "*", "enabled": False}],
    }
    with RunningProxy(config) as running:
        yield running.url


def send(recorder: Recorder, proxy_url: str, method: str, target: str,
         headers: list[tuple[str, str]] | None = None, body: bytes | None = None) -> tuple[RawResponse, Recorded]:
    """One request through the proxy and the one the recorder received for it (the last, alias look-ups aside)."""
    recorder.requests.clear()
    response = exchange(proxy_url, method, target, headers, body)
    received = [r for r in recorder.requests if b"/_alias" not in r.target]
    assert received, f"nothing reached the upstream; the proxy answered {response.status} {response.body[:200]!r}"
    return response, received[-1]


# ---- pass-through -----------------------------------------------------------------------------------------------

CLIENT_HEADERS = [("X-Opaque-Id", "prop-1"), ("x-MiXeD-case", "Keep  Me"), ("accept", "application/json")]


@PROPERTY
@given(method=st.sampled_from(METHODS), path=paths, query=st.one_of(st.none(), queries))
@example(method="DELETE", path="/idx/_doc/..", query=None)
@example(method="GET", path="/%2e%2e/_cat/indices", query="v&h=%ZZ")
@example(method="PUT", path="/idx/_doc/a%23b", query="refresh=true")
@example(method="GET", path="//idx//_doc/a%3Fb;x=y", query="q=%ZZ&+=+")
def test_pass_through_request_line_and_headers_are_the_clients(
    recorder: Recorder, proxy_url: str, method: str, path: str, query: str | None
) -> None:
    assume(not routed_by_proxy(path))
    target = path if query is None else f"{path}?{query}"
    body = b'{"a":1}' if method in ("PUT", "POST") else None
    headers = CLIENT_HEADERS + ([("Content-Type", "application/json")] if body else [])
    _, received = send(recorder, proxy_url, method, target, headers, body)
    assert received.request_line == f"{method} {target} HTTP/1.1".encode()
    forwarded = [h for h in received.headers if h[0].lower() != b"host"]
    sent = [(k.encode(), v.encode()) for k, v in headers]
    assert [h for h in forwarded if h in sent] == sent, forwarded
    assert received.body == (body or b"")


reasons = st.sampled_from(["OK", "Created", "Not Found", "Whatever You Say", "ok"])
header_names = st.sampled_from(["X-elastic-product", "content-type", "X-Custom-Case", "warning", "X-A", "x-a"])
header_values = st.text(st.sampled_from(string.ascii_letters + string.digits + " ;=,/\"-"), max_size=20).map(str.strip)
response_headers = st.lists(st.tuples(header_names, header_values), max_size=6)


@PROPERTY
@given(method=st.sampled_from(METHODS), status=st.sampled_from([200, 201, 400, 404, 409, 429, 500, 503]),
       reason=reasons, headers=response_headers, body=st.binary(max_size=300))
def test_pass_through_response_is_the_upstreams(
    recorder: Recorder, proxy_url: str, method: str, status: int, reason: str,
    headers: list[tuple[str, str]], body: bytes,
) -> None:
    recorder.response = http_response(status, reason, headers, body)
    try:
        response, _ = send(recorder, proxy_url, method, "/idx/_doc/1")
    finally:
        recorder.response = DEFAULT_RESPONSE
    expected = [(k.encode(), v.encode()) for k, v in headers] + [(b"content-length", str(len(body)).encode())]
    got = [h for h in response.headers if h[0].lower() not in HOP_BY_HOP]
    assert (response.status, response.reason) == (status, reason.encode())
    assert got == expected
    assert response.body == (b"" if method == "HEAD" else body)


# ---- reranked searches ------------------------------------------------------------------------------------------

_VIEW_SPELLINGS = ["from", "size", "_source", "_source_includes", "_source_excludes", "filter_path",
                   "%73ize", "fr%6Fm", "_source%5Fincludes", "size+", "sizes", "Size", "from%20", "q", "pretty",
                   "track_total_hits", "preference", "routing", "x"]
search_key = st.one_of(st.sampled_from(_VIEW_SPELLINGS),
                       st.lists(st.sampled_from(list(_QCHARS)), max_size=4).map("".join))
search_value = st.one_of(st.sampled_from(["0", "1", "2", "10", "title", "hits.hits._id", "true", "false", "-1"]),
                         query_text)
search_pair = st.one_of(st.builds(lambda k, v: f"{k}={v}", search_key, search_value), search_key)
search_queries = st.lists(search_pair, max_size=6).map("&".join)


def es_param_name(raw_pair: str) -> str:
    """The name the cluster reads from one `k=v` pair: `+` is a space, %-escapes decoded as UTF-8."""
    name = raw_pair.split("=", 1)[0].replace("+", " ")
    return unquote_to_bytes(name).decode("utf-8", "replace")


def without_view_params(query: str) -> list[str]:
    return [pair for pair in query.split("&") if pair and es_param_name(pair) not in VIEW_PARAMS]


def pairs(query: str) -> list[str]:
    """The non-empty pairs: an empty one (`a=1&&b=2`, a trailing `&`) means nothing to the cluster, and may go."""
    return [pair for pair in query.split("&") if pair]


@PROPERTY
@given(path=st.sampled_from(["/idx/_search", "/%69dx/_search", "/idx/%5Fsearch"]), query=search_queries)
@example(path="/idx/_search", query="size=2&pretty&filter_path=hits.hits._id&q=protein&&x=%2B")
@example(path="/idx/_search", query="")
@example(path="/idx/_search", query="_source=%80")  # not UTF-8 once decoded
def test_reranked_search_forwards_the_clients_query_minus_view_params(
    recorder: Recorder, proxy_url: str, path: str, query: str
) -> None:
    assume(all("%" not in p.split("=", 1)[0] or es_param_name(p).isprintable() for p in query.split("&")))
    target = f"{path}?{query}" if query else path
    headers = [("Content-Type", "application/json"), ("X-Rerank", "on")]
    response, received = send(recorder, proxy_url, "POST", target, headers, SEARCH_BODY)
    status = (response.header("X-Rerank-Status") or b"").decode()
    received_path, _, received_query = received.target.decode().partition("?")
    assert received_path == path
    if status == "reranked":
        assert pairs(received_query) == without_view_params(query)
    else:  # skipped: relayed as it came
        assert received.target == target.encode(), status


def test_a_plain_search_with_view_params_is_reranked(recorder: Recorder, proxy_url: str) -> None:
    """The property above must not pass by skipping everything."""
    response, received = send(recorder, proxy_url, "POST", "/idx/_search?size=2&x=%2B&from=0&pretty",
                              [("Content-Type", "application/json"), ("X-Rerank", "on")], SEARCH_BODY)
    assert response.header("X-Rerank-Status") == b"reranked"
    assert received.target == b"/idx/_search?x=%2B&pretty"


# ---- fixed cases: framing, the proxy's own headers, CONNECT ------------------------------------------------------

@pytest.mark.parametrize("name", ["Content-Length", "CONTENT-LENGTH"])
def test_an_empty_bodys_content_length_line_reaches_the_cluster_as_sent(
    recorder: Recorder, proxy_url: str, name: str
) -> None:
    _, received = send(recorder, proxy_url, "POST", "/idx/_refresh", [(name, "0")], b"")
    assert [h for h in received.headers if h[0].lower() == b"content-length"] == [(name.encode(), b"0")]


def test_a_skipped_search_keeps_the_clients_content_length_line(recorder: Recorder, proxy_url: str) -> None:
    headers = [("Content-Type", "application/json"), ("X-Rerank", "off"), ("content-LENGTH", str(len(SEARCH_BODY)))]
    response, received = send(recorder, proxy_url, "POST", "/idx/_search", headers, SEARCH_BODY)
    assert response.header("X-Rerank-Status") == b"skipped; reason=header-off"
    assert [h for h in received.headers if h[0].lower() == b"content-length"] == [
        (b"content-LENGTH", str(len(SEARCH_BODY)).encode())
    ]
    assert received.body == SEARCH_BODY


def test_only_the_proxys_own_headers_are_kept_back(recorder: Recorder, proxy_url: str) -> None:
    headers = [("X-Rerank", "off"), ("X-Rerank-Variant", "control"), ("X-Reranker-Team", "search"),
               ("X-Rerankable", "yes")]
    _, received = send(recorder, proxy_url, "GET", "/idx/_doc/1", headers)
    names = [k for k, _ in received.headers]
    assert b"X-Reranker-Team" in names and b"X-Rerankable" in names
    assert b"X-Rerank" not in names and b"X-Rerank-Variant" not in names


def test_connect_gets_one_es_style_400_and_the_connection_ends(recorder: Recorder, proxy_url: str) -> None:
    recorder.requests.clear()
    with RawConnection(proxy_url, timeout_s=10) as conn:
        conn.send(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n")
        received = b""
        while chunk := conn.sock.recv(65536):  # to the end: the proxy closes the connection after its one answer
            received += chunk
    assert received.count(b"HTTP/1.1 ") == 1 and received.startswith(b"HTTP/1.1 400 ")
    assert b"not a forward proxy" in received
    assert recorder.requests == []


@pytest.mark.parametrize(("request_head", "status"), [
    (b"GET /idx/_doc/1 HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n", 431),
    (b"GET /idx/_doc/" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
])
def test_heads_past_the_relays_limits_get_an_es_style_refusal(
    recorder: Recorder, proxy_url: str, request_head: bytes, status: int
) -> None:
    recorder.requests.clear()
    with RawConnection(proxy_url, timeout_s=10) as conn:
        conn.send(request_head)
        response = conn.response()
    assert response.status == status and b'"type":"illegal_argument_exception"' in response.body
    assert recorder.requests == []
