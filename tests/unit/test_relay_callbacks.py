"""The usual pass-through request (whole in one read, an idle cluster connection at hand) is served from the
protocols' callbacks, without a task; everything the worker's path promises still holds there: order of pipelined
requests, the retry of a kept connection the cluster closed, the upstream request cut when its client leaves, and
a broken answer said as an ES-style 502."""
from __future__ import annotations

import asyncio
from typing import Any

import orjson

from proxy.config import parse_config
from proxy.relay import RelayServer
from proxy.upstream import Upstream
from proxy.wire import RequestHead

MODELS = {"m": {"backend": "bi-encoder", "source": "x"}}


class _Cluster:
    """A keep-alive HTTP server on loopback: answers `GET /path` with the path as its body, except `/hang` (never
    answered), `/garbled` (not HTTP) and, with `close_second`, any second request on a connection (closed
    unanswered, as a cluster closing an idle connection just as a request arrives)."""

    def __init__(self, close_second: bool = False) -> None:
        self.close_second = close_second
        self.seen: list[tuple[int, bytes]] = []  # (connection number, path) of every request read
        self.heads: list[bytes] = []  # every request head as it arrived
        self.connections = 0
        self.hung = asyncio.Event()
        self.hung_closed = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number, served = self.connections, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                path = head.split(b" ", 2)[1]
                length = _content_length(head)
                if length:
                    path += b" " + await reader.readexactly(length)  # a body is answered too
                self.seen.append((number, path))
                if self.close_second and served == 1:
                    break
                if path == b"/hang":
                    self.hung.set()
                    await reader.read()  # until the proxy cuts the connection
                    self.hung_closed.set()
                    break
                if path == b"/garbled":
                    writer.write(b"HTTP/1.1 abc\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(path), path))
                await writer.drain()
                served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


class _PassThrough:
    """Claims nothing: every request goes to the cluster as it came."""

    def __init__(self, upstream: Upstream):
        self.upstream = upstream

    def claims(self, head: RequestHead) -> None:
        return None

    async def handle(self, incoming: Any, route: Any) -> Any:
        raise AssertionError("nothing is claimed")


class _Front:
    def __init__(self, cluster: _Cluster, server: asyncio.Server, upstream: Upstream, relay: RelayServer, port: int):
        self.cluster, self.server, self.upstream, self.relay, self.port = cluster, server, upstream, relay, port

    async def client(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def close(self) -> None:
        await self.relay.close()
        await self.upstream.close()
        self.server.close()


async def _front(cluster: _Cluster) -> _Front:
    server = await asyncio.start_server(cluster.serve, "127.0.0.1", 0)
    config = parse_config({"models": MODELS, "upstreams": [f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"],
                           "upstream": {"response_timeout_s": 10}})
    upstream = Upstream(config)
    relay = RelayServer(_PassThrough(upstream))
    _, port = await relay.listen("127.0.0.1", 0)
    return _Front(cluster, server, upstream, relay, port)


def _get(path: bytes) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path


async def _answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One answer: its status line and body (framed by Content-Length)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return head.split(b"\r\n", 1)[0], await asyncio.wait_for(reader.readexactly(_content_length(head)), 10)


def _content_length(head: bytes) -> int:
    lines = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    return int(lines[0].split(b":", 1)[1]) if lines else 0


async def _warm(front: _Front) -> None:
    """One request first, so that a kept cluster connection is idle in the pool."""
    reader, writer = await front.client()
    writer.write(_get(b"/warm"))
    assert await _answer(reader) == (b"HTTP/1.1 200 OK", b"/warm")
    writer.close()


async def test_requests_on_a_warm_pool_start_no_task() -> None:
    front = await _front(_Cluster())
    first_reader, first_writer = await front.client()  # its first request opens the connection: the worker's job
    first_writer.write(_get(b"/warm"))
    assert await _answer(first_reader) == (b"HTTP/1.1 200 OK", b"/warm")
    tasks = len(asyncio.all_tasks())
    reader, writer = await front.client()
    for path in (b"/one", b"/two"):
        writer.write(_get(path))
        assert await _answer(reader) == (b"HTTP/1.1 200 OK", path)
    assert len(asyncio.all_tasks()) == tasks
    assert front.cluster.connections == 1  # the one kept connection served them all
    writer.close()
    first_writer.close()
    await front.close()


async def test_pipelined_requests_are_answered_in_the_order_sent() -> None:
    front = await _front(_Cluster())
    await _warm(front)
    reader, writer = await front.client()
    writer.write(_get(b"/a") + _get(b"/b") + _get(b"/c"))  # one read: the first from callbacks, the rest queued
    assert [await _answer(reader) for _ in range(3)] == [(b"HTTP/1.1 200 OK", p) for p in (b"/a", b"/b", b"/c")]
    writer.close()
    await front.close()


async def test_a_kept_connection_the_cluster_closed_unanswered_is_retried_once_on_a_new_one() -> None:
    front = await _front(_Cluster(close_second=True))
    await _warm(front)
    reader, writer = await front.client()
    writer.write(_get(b"/again"))
    assert await _answer(reader) == (b"HTTP/1.1 200 OK", b"/again")
    assert front.cluster.seen == [(1, b"/warm"), (1, b"/again"), (2, b"/again")]
    writer.close()
    await front.close()


async def test_a_retried_request_keeps_its_body() -> None:
    front = await _front(_Cluster(close_second=True))
    await _warm(front)
    reader, writer = await front.client()
    writer.write(b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
    assert await _answer(reader) == (b"HTTP/1.1 200 OK", b"/post body")
    assert front.cluster.seen == [(1, b"/warm"), (1, b"/post body"), (2, b"/post body")]
    writer.close()
    await front.close()


async def test_a_body_goes_on_with_the_clients_own_content_length_line() -> None:
    front = await _front(_Cluster())
    await _warm(front)
    reader, writer = await front.client()
    writer.write(b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 04\r\nX-A: 1\r\n\r\nbody")
    assert await _answer(reader) == (b"HTTP/1.1 200 OK", b"/post body")
    assert front.cluster.heads[-1].split(b"\r\n")[2:] == [b"Content-Length: 04", b"X-A: 1", b"", b""]
    writer.close()
    await front.close()


async def test_a_client_that_hangs_up_has_its_cluster_connection_cut_and_the_pool_goes_on() -> None:
    front = await _front(_Cluster())
    await _warm(front)
    reader, writer = await front.client()
    writer.write(_get(b"/hang"))
    await asyncio.wait_for(front.cluster.hung.wait(), 10)
    writer.close()
    await asyncio.wait_for(front.cluster.hung_closed.wait(), 10)
    reader, writer = await front.client()
    writer.write(_get(b"/after"))
    assert await _answer(reader) == (b"HTTP/1.1 200 OK", b"/after")
    writer.close()
    await front.close()


async def test_a_garbled_answer_is_an_es_style_502_and_the_client_connection_stays_usable() -> None:
    front = await _front(_Cluster())
    await _warm(front)
    reader, writer = await front.client()
    writer.write(_get(b"/garbled"))
    status, body = await _answer(reader)
    assert status == b"HTTP/1.1 502 Bad Gateway"
    assert orjson.loads(body)["error"]["type"] == "rerank_proxy_upstream_exception"
    writer.write(_get(b"/next"))
    assert await _answer(reader) == (b"HTTP/1.1 200 OK", b"/next")
    writer.close()
    await front.close()
