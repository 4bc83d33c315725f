"""Idle pooled connections to the cluster are closed after `pool_idle_timeout_s`, so a burst of clients does not
leave hundreds of sockets open for ever; a connection in use is never closed for it."""
from __future__ import annotations

import asyncio

from proxy.config import parse_config
from proxy.upstream import Upstream

MODELS = {"m": {"backend": "bi-encoder", "source": "x"}}
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class _Cluster:
    """A keep-alive HTTP server on loopback that answers every request and tells when a connection closes."""

    def __init__(self) -> None:
        self.open = 0
        self.closed = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        self.open -= 1
        self.closed.set()
        writer.close()


async def _upstream(idle_s: float) -> tuple[Upstream, _Cluster, asyncio.Server]:
    cluster = _Cluster()
    server = await asyncio.start_server(cluster.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = parse_config({"models": MODELS, "upstreams": [f"http://127.0.0.1:{port}"],
                           "upstream": {"pool_idle_timeout_s": idle_s}})
    return Upstream(config), cluster, server


async def test_an_idle_pooled_connection_is_closed_after_the_idle_timeout() -> None:
    upstream, cluster, server = await _upstream(0.2)
    answer = await upstream.fetch("GET", b"/", [b"host: x\r\n"], None)
    assert answer.status == 200 and cluster.open == 1
    await asyncio.wait_for(cluster.closed.wait(), 10)  # closed by the proxy's pool, not by the test
    assert cluster.open == 0
    await upstream.close()
    server.close()


async def test_a_connection_reused_before_the_timeout_stays_open() -> None:
    upstream, cluster, server = await _upstream(30)
    for _ in range(3):
        assert (await upstream.fetch("GET", b"/", [b"host: x\r\n"], None)).status == 200
    assert cluster.open == 1 and not cluster.closed.is_set()  # one connection, reused
    await upstream.close()
    server.close()
