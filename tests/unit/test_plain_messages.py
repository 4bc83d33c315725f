"""The plain-message readers of the relay's plain lane (`proxy/plain.py`) against llhttp itself: whatever they take,
they read exactly as the relay's parser callbacks do (the same head, the same forwarded lines, body, framing and
keep-alive), and whatever they cannot read that way they leave to llhttp. The usual messages of real clients and
clusters are taken: they are what makes the relay cheap."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import httptools
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.plain import plain_request, plain_response, request_head
from proxy.relay import ClientConnection, _framing
from proxy.upstream import Exchange, _Connection
from proxy.wire import RequestFacts, RequestHead

PROPERTY = settings(max_examples=400, deadline=None, database=None)

HEY_GET = b"GET /idx/_doc/1 HTTP/1.1\r\nHost: 127.0.0.1:9201\r\nUser-Agent: hey/0.0.1\r\nAccept-Encoding: gzip\r\n\r\n"
ES_PY_SEARCH = (
    b"POST /idx/_search HTTP/1.1\r\nHost: localhost:9201\r\nAccept-Encoding: identity\r\n"
    b"accept: application/vnd.elasticsearch+json; compatible-with=8\r\nconnection: keep-alive\r\n"
    b"content-type: application/vnd.elasticsearch+json; compatible-with=8\r\nuser-agent: elasticsearch-py/8.19.0\r\n"
    b"x-elastic-client-meta: es=8.19.0,py=3.11.7,t=8.17.1,ur=2.5.0\r\nContent-Length: 27\r\n\r\n"
    b'{"query":{"match_all":{}}}\n'
)
ES_DOC = b"HTTP/1.1 200 OK\r\nX-elastic-product: Elasticsearch\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\n{\"a\"}"
ES_SEARCH = (b"HTTP/1.1 200 OK\r\nX-elastic-product: Elasticsearch\r\ncontent-type: application/json\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n6\r\n{\"a\":1\r\n1\r\n}\r\n0\r\n\r\n")


# ---- what llhttp makes of the same bytes, through the relay's own callbacks --------------------------------------


def request_by_llhttp(data: bytes) -> tuple[RequestHead, bytes] | None:
    """The head and body the relay's parser callbacks build, for exactly one whole request; None otherwise."""
    conn = ClientConnection(SimpleNamespace(loop=None))  # type: ignore[arg-type]
    try:
        conn.parser.feed_data(data)
    except httptools.HttpParserError:
        return None
    if len(conn.queue) != 1 or not conn.queue[0].body.finished:
        return None
    incoming = conn.queue[0]
    return incoming.head, b"".join(incoming.body.chunks)


class _Recorded:
    """A sink that keeps what the exchange told it."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def head(self, exchange: Exchange) -> None:
        self.events.append(("head", exchange.status, exchange.reason, exchange.head, exchange.conn.reusable))

    def body(self, chunk: bytes) -> None:
        self.events.append(("body", chunk))

    def read_done(self) -> None:
        pass

    def end(self) -> None:
        self.events.append(("end",))


def routing_reads(request: RequestFacts) -> tuple[Any, ...]:
    """What the proxy's routing reads off a request (`claims` is given the plain request itself)."""
    return (request.method, request.raw_path, request.path, request.query(), request.own,
            request.own_header(b"x-rerank"), request.own_header(b"x-rerank-variant"), dict(request.header_view()))


def taken_request(data: bytes) -> tuple[RequestHead, tuple[Any, ...], bytes, bytes, bool] | None:
    """What the plain reader makes of `data`: the head, what routing reads, the body, the forwarded lines and
    `authorized`."""
    plain = plain_request(data)
    if plain is None:
        return None
    return request_head(plain), routing_reads(plain), plain.body, plain.lines, plain.authorized


def llhttp_request(data: bytes) -> tuple[RequestHead, tuple[Any, ...], bytes, bytes, bool] | None:
    """The same, as the callbacks path has it: the lines it forwards with the client's own body."""
    parsed = request_by_llhttp(data)
    if parsed is None:
        return None
    head, body = parsed
    return head, routing_reads(head), body, b"".join(_framing(head, None)[1]), head.authorized


def taken_answer(data: bytes) -> list[Any] | None:
    """What the relay's sink would be told of a plain answer, from the plain reader's reading of it."""
    answer = plain_response(data)
    if answer is None:
        return None
    conn, _ = _connection()
    conn.pool.loop.close()
    events: list[Any] = [("head", answer.status, answer.reason, answer.lines,
                          answer.keep_alive and answer.status not in (400, 408, 413, 414, 431))]
    events += [("body", chunk) for chunk in (answer.chunks if answer.chunks is not None else [answer.body]) if chunk]
    return [*events, ("end",)]


def llhttp_answer(data: bytes) -> list[Any]:
    return [(e[0], e[1], e[2], b"".join(e[3].lines_with_length()), e[4]) if e[0] == "head" else e
            for e in response_events(data)]


def _connection() -> tuple[_Connection, _Recorded]:
    pool = SimpleNamespace(
        loop=asyncio.new_event_loop(), answer_limit=(300.0, "did not answer within"),
        pause_limit=(60.0, "sent nothing more of its answer for"), watch=lambda conn: None, unwatch=lambda conn: None, release=lambda conn: None,
    )
    conn = _Connection(pool)  # type: ignore[arg-type]
    sink = _Recorded()
    conn.exchange = Exchange(conn, sink, False, False, lambda exchange, error: None, False)
    return conn, sink


def response_events(data: bytes) -> list[Any]:
    """What an exchange's sink is told of `data` by llhttp; [] when llhttp refuses it."""
    conn, sink = _connection()
    conn.pool.loop.close()
    try:
        conn.parser.feed_data(data)
    except httptools.HttpParserError:
        return []
    return sink.events


# ---- the usual messages are taken -------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [HEY_GET, ES_PY_SEARCH], ids=["hey-get", "elasticsearch-py-search"])
def test_a_real_clients_request_is_taken_and_read_as_llhttp_reads_it(data: bytes) -> None:
    assert taken_request(data) is not None
    assert taken_request(data) == llhttp_request(data)


@pytest.mark.parametrize("data", [ES_DOC, ES_SEARCH], ids=["length", "chunked"])
def test_a_clusters_answer_is_taken_and_told_as_llhttp_tells_it(data: bytes) -> None:
    assert taken_answer(data) is not None
    assert taken_answer(data) == llhttp_answer(data)


def test_a_chunked_answer_keeps_its_chunks() -> None:
    answer = plain_response(ES_SEARCH)
    assert answer is not None and answer.chunks == [b'{"a":1', b"}"]


# ---- and nothing else --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    HEY_GET[:-2],  # not all here yet
    HEY_GET + HEY_GET,  # pipelined
    ES_PY_SEARCH[:-1],  # a body still arriving
    HEY_GET.replace(b"Host: ", b"Host:   "),  # spacing llhttp reads its own way
    HEY_GET.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"),
    HEY_GET.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    HEY_GET.replace(b"\r\n\r\n", b"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
    HEY_GET.replace(b"\r\n\r\n", b"\r\nConnection: close, x-a\r\n\r\n"),
    HEY_GET.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"),
    HEY_GET.replace(b"/idx", "/índice".encode()),  # past ASCII: the relay's masking, then llhttp
    HEY_GET.replace(b"GET", b"BREW"),
    HEY_GET.replace(b"GET", b"HEAD"),  # its answer has no body to read
    HEY_GET.replace(b"HTTP/1.1", b"HTTP/1.0"),
], ids=["partial", "pipelined", "body-arriving", "spacing", "expect", "chunked", "upgrade", "connection-names",
        "two-lengths", "utf8-target", "unknown-method", "head", "http-1.0"])
def test_anything_unusual_is_left_to_llhttp(data: bytes) -> None:
    assert plain_request(data) is None


@pytest.mark.parametrize("data", [
    ES_DOC[:-1],
    ES_SEARCH[:-2],
    b"HTTP/1.1 100 Continue\r\n\r\n" + ES_DOC,
    ES_DOC.replace(b"content-length: 5", b"content-length: 5\r\nTransfer-Encoding: chunked"),
    ES_SEARCH.replace(b"6\r\n", b"6;x=1\r\n"),  # a chunk extension
    ES_SEARCH.replace(b"0\r\n\r\n", b"0\r\nx-trailer: 1\r\n\r\n"),
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nto the end of the connection",
    b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
    ES_DOC.replace(b"HTTP/1.1", b"HTTP/1.0"),
], ids=["partial", "last-chunk-arriving", "interim", "both-framings", "extension", "trailer", "until-close", "204",
        "http-1.0"])
def test_an_unusual_answer_is_left_to_llhttp(data: bytes) -> None:
    assert plain_response(data) is None


# ---- for any bytes: taken means read exactly as llhttp reads them -------------------------------------------------
#
# Messages are generated plain (so that many are taken), then some are bent at one spot (so that the edges of what is
# taken are walked): a byte put in, a byte taken out.

_TOKEN_CHARS = "!#$%&'*+-.^_`|~" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_VISIBLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
names = st.one_of(
    st.sampled_from(["Host", "Content-Type", "Transfer-Encoding", "Connection", "Expect", "Upgrade", "X-Rerank",
                     "x-rerank-variant", "X-Reranked", "Authorization", "Keep-Alive", "TE", "Trailer",
                     "Proxy-Connection", "content-length"]),
    st.text(_TOKEN_CHARS, min_size=1, max_size=6),
)
values = st.one_of(
    st.sampled_from(["chunked", "close", "keep-alive", "Keep-Alive", "close, x-a", "100-continue", "off", "gzip",
                     "Basic eA==", "Upgrade", "a b", "v  "]),
    st.text(_VISIBLE, min_size=1, max_size=8),
)
field_lines = st.lists(st.tuples(names, values), max_size=6)
bodies = st.sampled_from([b"", b"12345", b"{}", b"0\r\n\r\n"])


def _fields(fields: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{name}: {value}\r\n".encode() for name, value in fields)


def _bent(plain: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    def bend(data: bytes, at: int, byte: int, insert: bool) -> bytes:
        at %= len(data) + 1
        return data[:at] + bytes([byte]) + data[at:] if insert else data[:at] + data[at + 1:]

    return st.one_of(plain, st.builds(bend, plain, st.integers(0, 400), st.integers(0, 255), st.booleans()))


def _request(method: str, target: str, version: str, fields: list[tuple[str, str]], body: bytes, framed: bool) -> bytes:
    length = f"Content-Length: {len(body)}\r\n".encode() if framed else b""
    return b"%s %s %s\r\n%s%s\r\n%s" % (method.encode(), target.encode(), version.encode(), _fields(fields), length,
                                        body)


requests = _bent(st.builds(
    _request,
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "BREW"]),
    st.one_of(st.sampled_from(["/", "/idx/_doc/1", "/idx/_search?q=a%20b", "/a/../b", "/%ZZ", "*", "http://x/"]),
              st.text(_VISIBLE, max_size=12).map(lambda t: "/" + t)),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
    field_lines,
    bodies,
    st.booleans(),
))


@PROPERTY
@given(requests)
@example(HEY_GET)
@example(ES_PY_SEARCH)
@example(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
@example(b"POST / HTTP/1.1\r\nContent-Length: 5 \r\n\r\n12345")
def test_a_taken_request_is_read_exactly_as_llhttp_reads_it(data: bytes) -> None:
    taken = taken_request(data)
    if taken is not None:
        assert taken == llhttp_request(data)


def _answer(version: str, status: str, reason: str, fields: list[tuple[str, str]], body: bytes, framing: str) -> bytes:
    if framing == "length":
        fields = [*fields, ("content-length", str(len(body)))]
    elif framing == "chunked":
        fields = [*fields, ("Transfer-Encoding", "chunked")]
        body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in (body[:2], body[2:]) if piece)
        body += b"0\r\n\r\n"
    return b"%s %s %s\r\n%s\r\n%s" % (version.encode(), status.encode(), reason.encode(), _fields(fields), body)


answers = _bent(st.builds(
    _answer,
    st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
    st.sampled_from(["200", "201", "204", "304", "400", "404", "413", "500", "100"]),
    st.sampled_from(["OK", "", "Not Found", "x\ty"]),
    field_lines,
    bodies,
    st.sampled_from(["length", "chunked", "none"]),
))


@PROPERTY
@given(answers)
@example(ES_DOC)
@example(ES_SEARCH)
@example(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 0\r\n\r\n")
@example(b"HTTP/1.1 413 Request Entity Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
def test_a_taken_answer_is_told_exactly_as_llhttp_tells_it(data: bytes) -> None:
    taken = taken_answer(data)
    if taken is not None:
        assert taken == llhttp_answer(data)
