"""The HTTP side of a search, in the parts that need no cluster: header decoding, the 413 for a body over the
limit, the `index.max_result_window` lookup, a search forced off streamed through unread."""
from __future__ import annotations

import gzip
import zlib
from types import SimpleNamespace

import pytest

from proxy.config import parse_config
from proxy.relay import PassThrough
from proxy.routing import Kind
from proxy.search_endpoint import (
    SearchEndpoint,
    _decompress,
    _Inflated,
    _max_result_window,
    _too_large,
    header_text,
    request_options,
)
from proxy.wire import HeaderView, Reply, RequestHead


@pytest.mark.parametrize("raw,text", [
    ("protéine".encode(), "protéine"),  # UTF-8: curl, Go, Java, JavaScript
    ("protéine".encode("latin-1"), "protéine"),  # latin-1: how Python's http.client writes a str
    (b"\xff\xfe", "ÿþ"),  # no UTF-8 at all: read as latin-1, never refused
    (b"lung cancer", "lung cancer"),
])
def test_a_rerank_query_header_is_read_as_utf8_else_latin1(raw: bytes, text: str) -> None:
    headers = HeaderView([(b"X-Rerank-Query", raw)])
    assert request_options(headers, "control").query_override == text


def test_an_empty_header_is_no_text() -> None:
    assert header_text("") is None and header_text(None) is None


class _Body:
    def __init__(self, finished: bool, data: bytes = b""):
        self.finished, self.size, self.data, self.read_with = finished, len(data), data, None

    async def read(self, limit: int) -> bytes:
        self.read_with = limit
        return self.data


class _Head:
    def __init__(self, keep_alive: bool):
        self.keep_alive = keep_alive


class _Incoming:
    def __init__(self, keep_alive: bool, body: _Body):
        self.head, self.body = _Head(keep_alive), body


async def test_a_body_over_the_limit_is_answered_as_the_clusters_answer_it() -> None:
    reply = await _too_large(_Incoming(True, _Body(False)))
    assert reply.serialize() == b"HTTP/1.1 413 Request Entity Too Large\r\ncontent-length: 0\r\n\r\n"


async def test_a_client_that_asked_to_close_is_told_the_connection_closes() -> None:
    reply = await _too_large(_Incoming(False, _Body(False)))
    assert set(reply.serialize().split(b"\r\n")[1:3]) == {b"content-length: 0", b"connection: close"}


async def test_a_body_already_all_here_is_dropped_so_the_connection_can_go_on() -> None:
    body = _Body(True, b"x" * 100)
    await _too_large(_Incoming(True, body))
    assert body.read_with == 100
    unfinished = _Body(False)
    await _too_large(_Incoming(True, unfinished))
    assert unfinished.read_with is None  # never waits for a body it will not use


class _Upstream:
    def __init__(self, answer: bytes | None):
        self.answer, self.targets = answer, []

    async def get_json_bytes(self, target: bytes) -> bytes | None:
        self.targets.append(target)
        return self.answer


async def test_the_window_lookup_asks_the_settings_api_for_the_searched_indices() -> None:
    upstream = _Upstream(b'{"a":{"settings":{"index.max_result_window":"5"},"defaults":{}},'
                         b'"b":{"settings":{},"defaults":{"index.max_result_window":"10000"}}}')
    assert await _max_result_window(upstream, "a,b*,remote:c") == 5
    assert upstream.targets == [(
        b"/a,b*/_settings/index.max_result_window?include_defaults=true&flat_settings=true"
        b"&ignore_unavailable=true&allow_no_indices=true&expand_wildcards=open"
    )]


@pytest.mark.parametrize("answer", [None, b"not json", b"[]", b"{}"])
async def test_an_unusable_settings_answer_means_no_known_window(answer: bytes | None) -> None:
    assert await _max_result_window(_Upstream(answer), "a") is None


async def test_other_clusters_indices_alone_are_not_looked_up() -> None:
    upstream = _Upstream(b"{}")
    assert await _max_result_window(upstream, "remote:a,other:b") is None
    assert upstream.targets == []


# ---- compressed search bodies ----

BODY = b'{"query":{"match":{"title":"protein"}}}'


@pytest.mark.parametrize("data,encoding,expected", [
    (gzip.compress(BODY), "gzip", BODY),
    (gzip.compress(BODY), " X-GZIP ", BODY),
    (gzip.compress(BODY[:10]) + gzip.compress(BODY[10:]), "gzip", BODY),  # members are one stream
    (zlib.compress(BODY), "deflate", BODY),
    (BODY, "identity", BODY),
    (b"", "gzip", b""),
])
def test_a_compressed_body_is_inflated(data: bytes, encoding: str, expected: bytes) -> None:
    assert _decompress(data, encoding, 1 << 20) == expected


@pytest.mark.parametrize("data,encoding", [
    (gzip.compress(BODY)[:-4], "gzip"),  # truncated
    (gzip.compress(BODY)[:-8] + b"\0\0\0\0" + gzip.compress(BODY)[-4:], "gzip"),  # bad CRC
    (gzip.compress(BODY) + b"xyz", "gzip"),  # the clusters ignore what follows; the proxy does not guess
    (BODY, "gzip"),
    (zlib.compress(BODY)[2:-4], "deflate"),  # raw deflate, which the clusters also take
    (BODY, "br"),
])
def test_a_body_the_proxy_cannot_inflate_exactly_is_refused(data: bytes, encoding: str) -> None:
    with pytest.raises((ValueError, EOFError, zlib.error)):
        _decompress(data, encoding, 1 << 20)


def test_inflating_stops_at_the_limit() -> None:
    bomb = gzip.compress(b" " * (8 << 20))
    with pytest.raises(_Inflated):
        _decompress(bomb, "gzip", 1 << 20)
    assert len(_decompress(gzip.compress(b" " * 1000), "gzip", 1000)) == 1000


class _Unread:
    """A body the search path must not touch."""

    finished, size = False, 60

    async def read(self, limit: int) -> bytes:
        raise AssertionError("the body was read")


def _endpoint(**config: object) -> SearchEndpoint:
    models = {"m": {"backend": "bi-encoder", "source": "x"}}
    return SearchEndpoint(SimpleNamespace(config=parse_config({"models": models, **config}),
                                          upstream=None, tracing=SimpleNamespace(enabled=False)))


def _forced_off_search(*extra: tuple[bytes, bytes]) -> SimpleNamespace:
    head = RequestHead(method="POST", target=b"/idx/_search")
    for name, value in [(b"Content-Length", b"60"), (b"X-Rerank", b" OFF "), *extra]:
        head.add(name, value)
    return SimpleNamespace(head=head, body=_Unread())


async def test_a_search_forced_off_streams_through_unread() -> None:
    answer = await _endpoint(max_search_body_bytes=10).handle(_forced_off_search(), Kind.SEARCH, "idx")
    assert isinstance(answer, PassThrough) and answer.body is None  # not even its size is the proxy's business
    assert answer.extra_lines == [b"X-Rerank-Status: skipped; reason=header-off\r\n",
                                  b"X-Rerank-Variant: control\r\n"]


async def test_a_search_forced_off_still_names_its_variant_or_refuses_an_unknown_one() -> None:
    endpoint = _endpoint(variants={"b": {"window": 5}})
    named = await endpoint.handle(_forced_off_search((b"X-Rerank-Variant", b"b")), Kind.SEARCH, "idx")
    assert named.extra_lines[1] == b"X-Rerank-Variant: b\r\n"
    unknown = await endpoint.handle(_forced_off_search((b"X-Rerank-Variant", b"z")), Kind.SEARCH, "idx")
    assert isinstance(unknown, Reply) and unknown.status == 400
