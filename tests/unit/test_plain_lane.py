"""The relay's plain lane, driven through its real protocols with recording transports: a plain request and its
plain answer take it (no parser callbacks, the connection back in the pool), and whenever the lane cannot go on the
callbacks path takes over from where it stopped, with the same bytes for the client as if it had served it all."""
from __future__ import annotations

import asyncio
from typing import Any

from proxy.config import parse_config
from proxy.plain import PlainRequest
from proxy.relay import ClientConnection, PassThrough, RelayServer
from proxy.upstream import Upstream, UpstreamTimeout, _Connection
from proxy.wire import RequestFacts

REQUEST = b"GET /idx/_doc/1 HTTP/1.1\r\nHost: proxy\r\nUser-Agent: t\r\nX-Rerank: off\r\n\r\n"
FORWARDED = b"GET /idx/_doc/1 HTTP/1.1\r\nhost: 127.0.0.1:9\r\nUser-Agent: t\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
CHUNKED = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"a\":1}\r\n0\r\n\r\n"


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


class _App:
    """Claims nothing, or passes `/idx/_search` through with a status line of its own (as a skipped search);
    keeps what `claims` was given and what `finished` is told."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.reports: list[tuple[str, int, int, str | None]] = []
        self.records_requests = True
        self.given: list[RequestFacts] = []

    def claims(self, head: RequestFacts) -> PassThrough | None:
        self.given.append(head)
        if head.raw_path == b"/idx/_search" and head.own_header(b"x-rerank") == b"off":
            return PassThrough(None, [b"X-Rerank-Status: skipped\r\n"])
        return None

    async def handle(self, incoming: Any, route: Any) -> Any:
        raise AssertionError("nothing is claimed")

    def finished(self, incoming: Any, status: int, sent: int, error: str | None) -> None:
        self.reports.append((incoming.head.method, status, sent, error))


class _Lane:
    def __init__(self) -> None:
        config = parse_config({"models": {"m": {"backend": "bi-encoder", "source": "x"}},
                               "upstreams": ["http://127.0.0.1:9"], "upstream": {"response_timeout_s": 5}})
        self.upstream = Upstream(config)
        self.app = _App(self.upstream)
        relay = RelayServer(self.app)
        self.client_transport = _Transport()
        self.client = ClientConnection(relay)
        self.client.connection_made(self.client_transport)  # type: ignore[arg-type]
        pool = self.upstream._pools[0]
        self.cluster_transport = _Transport()
        self.cluster = _Connection(pool)
        self.cluster.connection_made(self.cluster_transport)  # type: ignore[arg-type]
        pool.open += 1
        pool.idle.append(self.cluster)
        self.callbacks = 0
        original = self.client.on_message_begin

        def counted() -> None:
            self.callbacks += 1
            original()

        self.client.on_message_begin = counted  # type: ignore[method-assign]
        self.client.parser = type(self.client.parser)(self.client)  # llhttp takes its callbacks when made

    @property
    def answered(self) -> bytes:
        return b"".join(self.client_transport.sent)

    @property
    def idle(self) -> bool:
        return list(self.upstream._pools[0].idle) == [self.cluster]


async def test_a_plain_request_and_its_plain_answer_take_the_lane_and_the_connection_goes_back() -> None:
    lane = _Lane()
    lane.client.data_received(REQUEST)
    assert lane.cluster_transport.sent == [FORWARDED] and lane.callbacks == 0
    lane.cluster.data_received(ANSWER)
    assert lane.answered == ANSWER
    assert lane.idle and lane.app.reports == [("GET", 200, 7, None)]


async def test_a_search_the_application_passes_through_on_its_head_takes_the_lane_with_its_lines() -> None:
    lane = _Lane()
    lane.client.data_received(REQUEST.replace(b"/idx/_doc/1", b"/idx/_search"))
    assert lane.cluster_transport.sent == [FORWARDED.replace(b"/idx/_doc/1", b"/idx/_search")]
    assert lane.callbacks == 0 and [type(given) for given in lane.app.given] == [PlainRequest]  # no head built
    lane.cluster.data_received(ANSWER)
    assert lane.answered == ANSWER.replace(b"\r\n\r\n", b"\r\nX-Rerank-Status: skipped\r\n\r\n")
    assert lane.idle and lane.app.reports == [("GET", 200, 7, None)]


async def test_a_chunked_answer_goes_on_chunked() -> None:
    lane = _Lane()
    lane.client.data_received(REQUEST)
    lane.cluster.data_received(CHUNKED)
    assert lane.answered == CHUNKED.replace(b"Transfer-Encoding: chunked\r\n\r\n", b"transfer-encoding: chunked\r\n\r\n")
    assert lane.idle


async def test_an_answer_split_across_reads_is_taken_over_by_the_parser_with_the_same_bytes() -> None:
    whole, split = _Lane(), _Lane()
    whole.client.data_received(REQUEST)
    whole.cluster.data_received(ANSWER)
    split.client.data_received(REQUEST)
    split.cluster.data_received(ANSWER[:40])
    split.cluster.data_received(ANSWER[40:])
    assert split.answered == whole.answered
    assert split.idle and split.app.reports == whole.app.reports


async def test_a_cluster_past_its_deadline_is_an_es_style_504_and_its_connection_is_cut() -> None:
    lane = _Lane()
    lane.client.data_received(REQUEST)
    lane.cluster.expire_if_due(lane.cluster.loop.time() + 10)
    assert lane.answered.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert UpstreamTimeout.error_type.encode() in lane.answered
    assert lane.cluster_transport.closed and not lane.idle
    assert lane.app.reports == [("GET", 504, len(lane.answered.partition(b"\r\n\r\n")[2]), "timeout")]


async def test_a_client_that_leaves_has_its_cluster_request_cut_and_is_reported_gone() -> None:
    lane = _Lane()
    lane.client.data_received(REQUEST)
    lane.client.connection_lost(None)
    assert lane.cluster_transport.closed
    lane.cluster.connection_lost(None)  # what the cut brings
    assert lane.app.reports == [("GET", 499, 0, "client-closed")] and not lane.idle


async def test_a_request_that_arrives_while_one_is_on_the_lane_waits_its_turn() -> None:
    lane = _Lane()
    lane.client.data_received(REQUEST)
    lane.client.data_received(REQUEST.replace(b"_doc/1", b"_doc/2"))  # pipelined: read by the parser, queued
    assert lane.cluster_transport.sent == [FORWARDED]
    lane.cluster.data_received(ANSWER)
    await asyncio.sleep(0)  # the worker's turn: it sends the next one on the connection just freed
    assert lane.cluster_transport.sent == [FORWARDED, FORWARDED.replace(b"_doc/1", b"_doc/2")]
    lane.cluster.data_received(ANSWER)
    await asyncio.sleep(0)
    assert lane.answered == ANSWER + ANSWER
