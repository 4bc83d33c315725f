"""Shutting the relay down loses nothing: it stops accepting, answers what it has begun (the last answer on each
connection says `Connection: close`), closes idle connections at once, and cuts only what outlasts the grace. A request it cannot parse is answered in the
clusters' error format and logged in one line."""
from __future__ import annotations

import asyncio
from typing import Any

from proxy.relay import Incoming, RelayServer
from proxy.wire import Reply, RequestHead, json_reply


class _HeldApplication:
    """Answers every request itself, each once the test releases it."""

    upstream: Any = None

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.received = 0
        self.arrived = asyncio.Event()
        self.bodies: list[bytes | None] = []

    def claims(self, head: RequestHead) -> object:
        return "held"

    async def handle(self, incoming: Incoming, route: Any) -> Reply:
        self.received += 1
        self.arrived.set()
        self.bodies.append(await incoming.body.read(1 << 20))
        await self.release.wait()
        return json_reply(200, b'{"ok":true}')


async def _started() -> tuple[RelayServer, _HeldApplication, int]:
    app = _HeldApplication()
    relay = RelayServer(app)
    _, port = await relay.listen("127.0.0.1", 0)
    return relay, app, port


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 10)


REQUEST = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_a_request_in_flight_is_answered_with_connection_close_then_the_connection_ends() -> None:
    relay, app, port = await _started()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    await app.arrived.wait()
    relay.stop_accepting()
    app.release.set()
    answer = await _read_all(reader)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close\r\n" in answer
    assert answer.endswith(b'{"ok":true}')
    assert await relay.drained(5) == 0
    writer.close()
    await relay.close()


async def test_pipelined_requests_already_received_are_all_answered() -> None:
    relay, app, port = await _started()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST * 3)
    await app.arrived.wait()
    relay.stop_accepting()
    app.release.set()
    answer = await _read_all(reader)
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert answer.count(b"connection: close") == 1  # on the last answer only
    writer.close()
    await relay.close()


async def test_idle_connections_close_at_once_and_new_ones_are_refused() -> None:
    relay, app, port = await _started()
    app.release.set()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    assert (await reader.readuntil(b'{"ok":true}')).startswith(b"HTTP/1.1 200 OK")
    relay.stop_accepting()
    assert await _read_all(reader) == b""  # closed by the relay, the client still idle
    assert await relay.drained(5) == 0
    try:
        await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        refused = True
    else:
        refused = False
    assert refused
    writer.close()
    await relay.close()


async def test_what_outlasts_the_grace_period_is_counted_and_cut_by_close() -> None:
    relay, app, port = await _started()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    await app.arrived.wait()
    relay.stop_accepting()
    assert await relay.drained(0.05) == 1
    await relay.close()
    assert await _read_all(reader) == b""
    writer.close()


async def test_a_request_whose_body_is_still_arriving_is_read_and_answered() -> None:
    relay, app, port = await _started()
    app.release.set()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"  # it is being served
    relay.stop_accepting()
    writer.write(b"abcd")
    answer = await _read_all(reader)
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in answer
    assert app.bodies == [b"abcd"]
    writer.close()
    await relay.close()


async def test_a_malformed_request_gets_an_es_style_400_and_one_warning_line(caplog) -> None:
    relay, app, port = await _started()
    caplog.set_level("DEBUG")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    answer = await _read_all(reader)
    assert answer.startswith(b"HTTP/1.1 400 ") and b'"illegal_argument_exception"' in answer
    relayed = [r for r in caplog.records if r.name == "proxy.relay"]
    assert [r.levelname for r in relayed] == ["WARNING"] and relayed[0].exc_info is None
    assert "malformed request from 127.0.0.1:" in relayed[0].getMessage()
    writer.close()
    await relay.close()
