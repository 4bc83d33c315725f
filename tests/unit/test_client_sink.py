"""How the cluster's answer is written to the client: whole small answers in one write, big ones streamed."""
from __future__ import annotations

import asyncio
from typing import Any

from proxy.relay import _ClientSink
from proxy.wire import Head, RequestHead


class _Conn:
    """What the sink needs of a client connection: a loop and a socket that records each write."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.writes: list[bytes] = []
        self.written = asyncio.Event()
        self.write_paused = False
        self.closing = False  # the server is not shutting down

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.written.set()

    def on_drain(self, callback: Any) -> None:
        pass


class _Exchange:
    def __init__(self, *headers: tuple[bytes, bytes], status: int = 200):
        self.status, self.reason, self.head = status, b"OK", Head()
        for name, value in headers:
            self.head.add(name, value)


def _sink(loop: asyncio.AbstractEventLoop, version: str = "1.1", method: str = "GET") -> tuple[_ClientSink, _Conn]:
    conn = _Conn(loop)
    request = RequestHead(method=method, version=version)
    return _ClientSink(conn, request, [b"X-Rerank-Status: skipped\r\n"]), conn  # type: ignore[arg-type]


async def test_a_chunked_answer_split_across_reads_goes_out_in_one_write() -> None:
    sink, conn = _sink(asyncio.get_running_loop())
    sink.head(_Exchange((b"content-type", b"application/json"), (b"Transfer-Encoding", b"chunked")))  # type: ignore
    sink.body(b'{"hits":[]}')
    sink.read_done()  # the last chunk comes in the cluster's next segment
    assert conn.writes == []
    sink.end()
    assert conn.writes == [
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nX-Rerank-Status: skipped\r\n"
        b"transfer-encoding: chunked\r\n\r\nb\r\n{\"hits\":[]}\r\n0\r\n\r\n"
    ]


async def test_a_small_answer_with_a_length_waits_for_its_body() -> None:
    sink, conn = _sink(asyncio.get_running_loop())
    sink.head(_Exchange((b"content-length", b"2")))  # type: ignore[arg-type]
    sink.read_done()
    assert conn.writes == []
    sink.body(b"{}")
    sink.read_done()
    assert conn.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nX-Rerank-Status: skipped\r\n\r\n{}"]


async def test_a_big_chunked_answer_streams_instead_of_waiting() -> None:
    sink, conn = _sink(asyncio.get_running_loop())
    sink.head(_Exchange((b"Transfer-Encoding", b"chunked")))  # type: ignore[arg-type]
    sink.body(b"x" * 70_000)
    sink.read_done()
    assert len(conn.writes) == 1 and conn.writes[0].endswith(b"x\r\n")


async def test_a_slow_chunked_answer_is_released_after_a_moment() -> None:
    sink, conn = _sink(asyncio.get_running_loop())
    sink.head(_Exchange((b"Transfer-Encoding", b"chunked")))  # type: ignore[arg-type]
    sink.body(b"part")
    sink.read_done()
    assert conn.writes == []
    await asyncio.wait_for(conn.written.wait(), timeout=5)  # the hold is 2 ms
    assert conn.writes[0].endswith(b"4\r\npart\r\n")


async def test_an_http_1_0_client_gets_a_chunked_answer_unframed_and_the_connection_closed() -> None:
    sink, conn = _sink(asyncio.get_running_loop(), version="1.0")
    sink.head(_Exchange((b"Transfer-Encoding", b"chunked")))  # type: ignore[arg-type]
    sink.body(b"{}")
    sink.end()
    assert conn.writes == [b"HTTP/1.0 200 OK\r\nX-Rerank-Status: skipped\r\nconnection: close\r\n\r\n{}"]
    assert sink.close


async def test_a_head_answer_goes_out_at_once() -> None:
    sink, conn = _sink(asyncio.get_running_loop(), method="HEAD")
    sink.head(_Exchange((b"content-length", b"135")))  # type: ignore[arg-type]
    sink.read_done()
    assert conn.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 135\r\nX-Rerank-Status: skipped\r\n\r\n"]
