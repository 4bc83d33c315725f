"""The data port: HTTP/1.1 from clients, parsed by llhttp (httptools), relayed to the cluster byte for byte.

Each client connection is an asyncio protocol that serves its requests in order (pipelined ones wait their turn).
A request the application does not claim (everything but searches and the proxy's own paths) is passed through:
its head goes upstream as the client sent it, less the hop-by-hop headers, its body streams both ways with
back-pressure, and the cluster's response streams back the same way. A claimed request is read whole and answered
by the application, which may still ask for it to be passed through (a skipped search).

The usual request (whole in one read, passed through, an idle cluster connection at hand) is served from the
protocol's callbacks alone: sent upstream as it is parsed, answered as the cluster's answer is parsed. Anything
that must wait (a body still arriving, a connection to open, a search to read, an error to answer after a
retry) goes to the connection's worker task, which serves the queue in order.

The most usual request of all (plain HTTP/1.1, `proxy/plain.py`, answered plainly) takes the plain lane: one step
per direction, no parser callbacks, no per-request objects beyond one `_PlainExchange`. Whenever the lane cannot go
on (an answer that is not plain, a cluster that fails or is slow, a client that leaves), the objects the callbacks
path would have built are built then, and that path goes on from where the lane stopped.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httptools

from .errors import es_error_reply
from .plain import PlainRequest, PlainResponse, plain_request, request_head
from .upstream import Exchange, Upstream, UpstreamError
from .wire import Reply, RequestFacts, RequestHead

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 256 * 1024  # the clusters stop at 16 KB (`http.max_header_size`): theirs is the answer below this
MAX_TARGET_BYTES = 64 * 1024  # and at 4 KB for the request line (`http.max_initial_line_length`)
BUFFERED_BODY = 1 << 20  # client body bytes held before reading from the client pauses
MAX_QUEUED = 32  # pipelined requests held before reading from the client pauses
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
DISCARD_LIMIT = 128 << 20  # body bytes read and dropped after an answer that did not need them, before closing
DISCARD_S = 30.0  # and for how long
_COALESCE = 64 * 1024  # a response head waits for a body up to this size, to go out with it
_HOLD_S = 0.002  # how long the start of a chunked answer may wait for its end


@dataclass(frozen=True)
class PassThrough:
    """The application's answer that says: send it to the cluster after all, with this body (None: the client's,
    as it streams) and these extra response headers. `note`: what the application keeps of the request (for a
    decision taken on the head alone, when `Incoming.note` is not yet there to hold it)."""

    body: bytes | None
    extra_lines: Sequence[bytes] = ()
    note: Any = None


class Application(Protocol):
    """What the relay serves: which requests it must not just pass through, and how it answers them."""

    @property
    def upstream(self) -> Upstream: ...

    def claims(self, head: RequestFacts) -> object | None:
        """A route for a request the application answers itself (given back to `handle`); None: pass it through;
        a PassThrough: pass it through so (decided on the head alone). `head`: a `RequestHead`, or the plain lane's
        `PlainRequest`, read alike."""

    async def handle(self, request: Incoming, route: Any) -> Reply | PassThrough: ...


# What an application may also have: `finished(request, status, sent, error)`, told once per request when it has
# been answered (`request` None: one that could not be parsed), with the status and body bytes the client was sent,
# and `error`, the kind of cluster failure that made the proxy answer or cut the connection (`unavailable`,
# `timeout`, `broken`), or `client-closed` (status 499, nginx's) when the client left before its answer ended.
Finished = Callable[["Incoming | None", int, int, "str | None"], None]
CLIENT_CLOSED = 499


class _TooLarge(Exception):
    """A request line or head past the relay's limits (far past the cluster's own)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ClientBody:
    """A request body as it arrives: buffered until an exchange attaches (then written straight through)."""

    __slots__ = ("conn", "chunks", "size", "finished", "exchange", "awaits_continue", "discarding", "_waiter")

    def __init__(self, conn: ClientConnection, finished: bool, awaits_continue: bool = False):
        self.conn = conn
        self.chunks: list[bytes] = []
        self.size = 0
        self.finished = finished
        self.exchange: Exchange | None = None
        # `Expect: 100-continue`: the client sends the body once told to, which is when it is first wanted (so a
        # request refused on its head alone, e.g. a 413, gets its answer without a `100 Continue` first).
        self.awaits_continue = awaits_continue and not finished
        self.discarding = False
        self._waiter: asyncio.Future[None] | None = None

    def _continue(self) -> None:
        if self.awaits_continue:
            self.awaits_continue = False
            if not self.finished:  # a client that did not wait has sent it all: no need to ask for it
                self.conn.write(_CONTINUE)

    @property
    def empty(self) -> bool:
        return self.finished and not self.size

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.discarding:
            if self.size > DISCARD_LIMIT:
                self._wake()  # too much to drop quietly: the connection closes instead
            return
        exchange = self.exchange
        if exchange is not None:
            exchange.write_body(chunk)
            if exchange.pause_body() and not self.conn.reading_paused:
                self.conn.pause_until(exchange.resumed())
            return
        self.chunks.append(chunk)
        self.conn.buffered += len(chunk)
        if self.conn.buffered > BUFFERED_BODY:
            self.conn.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.finished = True
        if self.exchange is not None:
            self.exchange.end_body()
        self._wake()

    def attach(self, exchange: Exchange) -> None:
        self._continue()
        self.exchange = exchange
        for chunk in self.chunks:
            exchange.write_body(chunk)
        self._release()
        if self.finished:
            exchange.end_body()

    def whole(self) -> bytes:
        """A finished body's bytes, kept (for a caller that may still hand the request on): `consume` drops them."""
        if len(self.chunks) > 1:
            self.chunks = [b"".join(self.chunks)]
        return self.chunks[0] if self.chunks else b""

    def consume(self) -> None:
        self._continue()
        self._release()

    async def read(self, limit: int) -> bytes | None:
        """The whole body, or None when it is larger than `limit` (what was read so far stays buffered)."""
        self._continue()
        while not self.finished and self.size <= limit:
            self._waiter = self.conn.loop.create_future()
            self.conn.resume_reading()
            await self._waiter
        if self.size > limit:
            return None
        data = b"".join(self.chunks)
        self._release()
        return data

    async def discard(self) -> bool:
        """Reads the rest of a body the request was answered without, and drops it, as the clusters do, so the
        connection stays usable; False when that cannot be done (too much left, too slow, or a client that was
        never told to send it): the connection must close."""
        if self.awaits_continue:
            return False
        self.discarding = True
        self._release()
        try:
            async with asyncio.timeout(DISCARD_S):
                while not self.finished and self.size <= DISCARD_LIMIT:
                    self._waiter = self.conn.loop.create_future()
                    self.conn.resume_reading()
                    await self._waiter
        except TimeoutError:
            return False
        return self.finished

    def _release(self) -> None:
        if self.chunks:
            self.conn.buffered -= sum(map(len, self.chunks))
            self.chunks = []
        self.conn.resume_reading()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


_UNDECIDED = object()
_AS_SENT = PassThrough(None)  # what an unclaimed request is


_clock = time.perf_counter


@dataclass(slots=True)
class Incoming:
    head: RequestHead
    body: ClientBody
    decision: object = _UNDECIDED  # what `Application.claims` said, asked once
    fresh: bool = False  # send it on a new cluster connection: a kept one closed under it, unanswered
    started: float = 0.0  # time.perf_counter() when its head was parsed
    upstream_at: float = 0.0  # when the relay sent it to the cluster
    upstream_s: float | None = None  # and how long the cluster's answer took (None: the relay did not pass it on)
    note: Any = None  # what the application keeps of the request while it serves it, for `finished`
    reported: bool = False  # `finished` was told


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _ClientSink:
    """The cluster's response on its way to the client: what one read of the cluster's socket delivers goes out in
    one write, when the connection calls `read_done` (a small answer: one send())."""

    __slots__ = (
        "conn", "request", "extra", "started", "close", "rechunk", "exchange", "sent", "_pending", "_hold", "_held",
        "_timer", "_ended",
    )

    def __init__(self, conn: ClientConnection, request: RequestHead, extra: Sequence[bytes]):
        self.conn = conn
        self.request = request
        self.extra = extra
        self.started = False  # something of the response was written: an error can no longer be answered
        self.close = not request.keep_alive
        self.rechunk = False
        self.exchange: Exchange | None = None
        self.sent = 0  # body bytes of the answer, as the cluster framed them
        self._pending: list[bytes] = []
        self._hold = False  # keep what is pending for the next read
        self._held = 0
        self._timer: asyncio.TimerHandle | None = None
        self._ended = False

    def head(self, exchange: Exchange) -> None:
        self.exchange = exchange
        head = exchange.head
        request = self.request
        # The clusters answer in the client's version (the relay asked in 1.1 for it).
        lines = [b"HTTP/%s %d %s\r\n" % (request.version.encode(), exchange.status, exchange.reason)]
        lines += head.lines_with_length()
        lines += self.extra
        length = head.content_length
        must_close = False
        if head.chunked and length is None:
            if request.version == "1.1":
                lines.append(b"transfer-encoding: chunked\r\n")
                self.rechunk = True
            else:
                must_close = True  # an HTTP/1.0 client reads to the end of the connection
        elif length is None and exchange.status not in (204, 304) and request.method != "HEAD":
            must_close = True  # the cluster frames this body by closing: so must we
        if (must_close or self.conn.closing) and not self.close:
            # Said only when closing is the relay's own choice: the clusters never add a `Connection` header.
            lines.append(b"connection: close\r\n")
            self.close = True
        lines.append(b"\r\n")
        self._pending = lines
        # The body often arrives in the cluster's next segment: a head waits for a small body, and a chunked answer
        # (Elasticsearch sends searches so) for its last chunk, so the whole answer reaches the client in one write.
        self._hold = self.rechunk or (
            request.method != "HEAD" and length is not None and length.isdigit() and 0 < int(length) <= _COALESCE
        )

    def body(self, chunk: bytes) -> None:
        self.sent += len(chunk)
        if self.rechunk:
            self._pending.append(_chunk(chunk))
        else:
            self._pending.append(chunk)
            self._hold = False
        self._held += len(chunk)
        if self._held > _COALESCE:  # a big answer streams; only a small one waits for its end
            self._hold = False

    def read_done(self) -> None:
        if self._ended:
            return
        if self._hold:
            if self._timer is None:  # a slow answer does not wait for long either
                self._timer = self.conn.loop.call_later(_HOLD_S, self._release)
            return
        self._write()
        self._hold, self._held = self.rechunk, 0

    def end(self) -> None:
        """The answer is complete (called as the cluster's last byte is parsed): the rest goes out now."""
        self._ended = True
        if self.rechunk:
            self._pending.append(b"0\r\n\r\n")
        if self._timer is not None:
            self._timer.cancel()
        self._write()

    def _release(self) -> None:
        self._timer = None
        self._write()

    def _write(self) -> None:
        if self._pending:
            self.started = True
            self.conn.write(b"".join(self._pending))
            self._pending = []
            if self.conn.write_paused and self.exchange is not None:
                self.exchange.pause_reading()
                self.conn.on_drain(self.exchange.resume_reading)


class _PlainExchange:
    """A plain request on the plain lane: what the client connection needs to answer it, or to hand it on."""

    __slots__ = ("request", "decision", "extra", "started", "upstream")

    def __init__(self, request: PlainRequest, decision: object, extra: Sequence[bytes]):
        self.request = request
        self.decision = decision  # what `claims` said (None: pass it through)
        self.extra = extra
        self.started = _clock()
        self.upstream: Any = None  # the cluster connection it went out on


class ClientConnection(asyncio.Protocol):
    """One client's connection; parses requests as they arrive and serves them one at a time, in order."""

    def __init__(self, server: RelayServer):
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Incoming] = deque()
        self.buffered = 0
        self.write_paused = False
        self._parsing: Incoming | None = None
        self._head: RequestHead | None = None
        self._url: list[bytes] = []
        self._url_size = 0
        self._worker: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self.reading_paused = False
        self._drain_callbacks: list[Callable[[], None]] = []
        self._broken: Reply | None = None  # a request that could not be parsed: answered after those before it
        self._in_message = False  # between a request's first byte and its last
        self._raw_target: bytes | None = None  # the target as sent, where the parser was given a masked copy
        self._fast: Incoming | None = None  # the request served from callbacks, while its exchange runs
        self._fast_exchange: Exchange | None = None
        self._plain: _PlainExchange | None = None  # the request on the plain lane, while its answer is awaited
        self.lost = False

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        if self.server.draining:  # accepted just before the listener closed
            self.drain()

    @property
    def peer(self) -> str:
        address = self.transport.get_extra_info("peername") if self.transport is not None else None
        return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else "?"

    def data_received(self, data: bytes) -> None:
        if self._idle_for_plain:
            plain = plain_request(data)
            if plain is not None:
                self._serve_plain(plain)
                return
        if not self._in_message and not data.isascii():
            data = self._ascii_request_line(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade()
        except httptools.HttpParserError as err:
            self._unparseable(err)
        self._dispatch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.forget(self)
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()  # its upstream exchange is aborted and its pool slot freed
        if self._fast_exchange is not None:
            self._fast_exchange.abandon()
        if self._plain is not None:
            self._plain.upstream.abort()  # adopted as it closes: the path below reports the client gone
        self._wake()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        callbacks, self._drain_callbacks = self._drain_callbacks, []
        for callback in callbacks:
            callback()

    def _ascii_request_line(self, data: bytes) -> bytes:
        """llhttp refuses bytes past ASCII in a request target, which the clusters accept (a raw UTF-8 `q=`): the
        parser gets a copy with each such byte masked, and the relay keeps the target as it came."""
        end = data.find(b"\n")
        line = data[:end] if end >= 0 else b""
        if not line or line.isascii():
            return data  # not a request line of this read, or a body byte: the parser's to judge
        method, _, rest = line.partition(b" ")
        target = rest.rpartition(b" ")[0] if b" " in rest else b""
        if not target:
            return data
        self._raw_target = target
        masked = bytes(b if b < 0x80 else 0x78 for b in target)  # `x`: a byte llhttp takes anywhere in a target
        return method + b" " + masked + line[len(method) + 1 + len(target):] + data[end:]

    # -- httptools callbacks --

    def on_message_begin(self) -> None:
        self._head = RequestHead()
        self._url = []
        self._url_size = 0
        self._in_message = True

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._url_size += len(url)
        if self._url_size > MAX_TARGET_BYTES:
            raise _TooLarge(414, f"the request line is longer than {MAX_TARGET_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        head = self._head
        assert head is not None
        head.add(name, value)
        if head.size > MAX_HEAD_BYTES:
            raise _TooLarge(431, f"the request headers are larger than {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        head = self._head
        assert head is not None
        parser = self.parser
        head.method = parser.get_method().decode("latin-1")
        head.version = parser.get_http_version()
        head.keep_alive = parser.should_keep_alive()
        head.target = b"".join(self._url)
        if self._raw_target is not None:
            head.target, self._raw_target = self._raw_target, None
        if head.connection:
            head.finish()
        self._parsing = self._queued(self._incoming(head))

    def _incoming(self, head: RequestHead, started: float | None = None) -> Incoming:
        no_body = not head.chunked and head.content_length in (None, b"0")
        awaits = head.expect == b"100-continue" and head.version == "1.1"
        return Incoming(head, ClientBody(self, finished=no_body, awaits_continue=awaits),
                        started=_clock() if started is None else started)

    def _queued(self, incoming: Incoming) -> Incoming:
        self.queue.append(incoming)
        if len(self.queue) > MAX_QUEUED:
            self.pause_reading()
        return incoming

    def _plain_incoming(self, request: PlainRequest, decision: object, started: float | None = None) -> Incoming:
        """A plain request as the parser would have made it, with what `claims` said (asked once)."""
        incoming = self._incoming(request_head(request), started)
        incoming.decision = decision
        if request.body:
            incoming.body.feed(request.body)
            incoming.body.finish()
        return incoming

    def on_body(self, chunk: bytes) -> None:
        self._parsing.body.feed(chunk)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        incoming = self._parsing
        if incoming is not None and not incoming.body.finished:
            incoming.body.finish()
        self._parsing = None
        self._in_message = False

    # -- shutting down --

    @property
    def closing(self) -> bool:
        """The server drains and nothing else is queued here: the answer now written is this connection's last."""
        return self.server.draining and not self.queue

    @property
    def idle(self) -> bool:
        """No request being received, queued or served: closing now loses nothing."""
        return (not self._in_message and not self.queue and self._fast is None and self._plain is None
                and self._worker_waits)

    @property
    def _idle_for_plain(self) -> bool:
        """Nothing else is read, queued, served or owed here: a request may take the plain lane."""
        worker, wakeup = self._worker, self._wakeup  # `_worker_waits`, said here: asked of every read
        return (self._plain is None and self._fast is None and not self._in_message and not self.queue
                and self._broken is None and (worker is None or (wakeup is not None and not wakeup.done()))
                and not self.server.draining)

    @property
    def _worker_waits(self) -> bool:
        """The worker has nothing to do (or was never needed), and has not been woken either."""
        return self._worker is None or (self._wakeup is not None and not self._wakeup.done())

    def drain(self) -> None:
        """The server stops: an idle connection closes now, a busy one after the answers it owes."""
        if self.idle:
            self.close()

    # -- reading and writing --

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def on_drain(self, callback: Callable[[], None]) -> None:
        self._drain_callbacks.append(callback)

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.lost:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.buffered <= BUFFERED_BODY and len(self.queue) <= MAX_QUEUED:
            self.reading_paused = False
            if self.transport is not None and not self.lost:
                self.transport.resume_reading()

    def pause_until(self, ready: Awaitable[None]) -> None:
        """Stop reading the client until the upstream socket has drained (a streamed body outran the cluster)."""
        self.pause_reading()

        async def resume() -> None:
            await ready
            self.resume_reading()

        self.server.track(self.loop.create_task(resume()))

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.abort()

    # -- requests the parser could not take --

    def _unparseable(self, err: httptools.HttpParserError) -> None:
        # httptools wraps what a callback raised in its own error; the limit's status is on the original.
        cause = err.__cause__ or err.__context__
        if isinstance(cause, _TooLarge):
            status, message = cause.status, str(cause)
        else:
            status, message = 400, f"invalid HTTP request: {err}"
        log.warning("malformed request from %s answered %d: %s", self.peer, status, message)
        self._broken = es_error_reply(status, "illegal_argument_exception", message)
        self.pause_reading()
        self._parsing = None

    def _upgrade(self) -> None:
        """`Upgrade` is hop-by-hop and not passed on: the request is served as a plain one (a `CONNECT` is refused
        by `_serve`, as its target is no path), then the connection closes, since what follows is not HTTP."""
        head = self._head
        if head is not None:
            head.keep_alive = False
        self.on_message_complete()
        self.pause_reading()

    # -- the plain lane --

    def _serve_plain(self, request: PlainRequest) -> None:
        app = self.server.app
        decision = app.claims(request)  # read as a head would be: no head is built for it
        extra: Sequence[bytes] = ()
        if decision is not None:
            if not isinstance(decision, PassThrough) or decision.body is not None:  # the application's to answer
                self._queued(self._plain_incoming(request, decision))
                self._dispatch()
                return
            extra = decision.extra_lines
        self._plain = plain = _PlainExchange(request, decision, extra)
        plain.upstream = app.upstream.start_plain(
            self, request.method, request.target, request.lines, request.body, request.authorized)
        if plain.upstream is None:  # no idle connection: the worker opens one
            self._plain = None
            self._queued(self._plain_incoming(request, decision, plain.started))
            self._dispatch()

    # `PlainTaker`: what the upstream connection tells of the request on the lane.

    def plain_answered(self, answer: PlainResponse) -> None:
        plain, self._plain = self._plain, None
        assert plain is not None
        if self.lost:  # the cluster answered as the client left
            if self.server.records:
                self._report_plain(plain, CLIENT_CLOSED, 0, "client-closed")
            return
        parts = [b"HTTP/1.1 %d %s\r\n" % (answer.status, answer.reason), answer.lines, *plain.extra]
        close = not plain.request.keep_alive
        if not close and self.server.draining and not self.queue:  # `closing`
            parts.append(b"connection: close\r\n")
            close = True
        if answer.chunks is None:
            parts += (b"\r\n", answer.body)
        else:
            parts.append(b"transfer-encoding: chunked\r\n\r\n")
            parts += map(_chunk, answer.chunks)
            parts.append(b"0\r\n\r\n")
        self.transport.write(b"".join(parts))  # type: ignore[union-attr]  # not lost, so connected
        if self.server.records:
            self._report_plain(plain, answer.status, len(answer.body), None)
        if close:
            self.close()
        elif self.queue or self._broken is not None or self.server.draining:
            self._run_worker()

    def _report_plain(self, plain: _PlainExchange, status: int, sent: int, error: str | None) -> None:
        """The record the application keeps of each request (`server.records`): what the others get."""
        body = ClientBody(self, finished=True)
        body.size = len(plain.request.body)
        incoming = Incoming(request_head(plain.request), body, plain.decision,
                            started=plain.started, upstream_at=plain.started, upstream_s=_clock() - plain.started)
        self._report(incoming, status, sent, error)

    def plain_adopted(self, conn: Any) -> Exchange:
        """The lane cannot go on: the request becomes what the callbacks path would have made of it, in flight."""
        plain, self._plain = self._plain, None
        assert plain is not None
        incoming = self._plain_incoming(plain.request, plain.decision, plain.started)
        incoming.upstream_at = plain.started
        self._fast = incoming
        exchange: Exchange = conn.adopted(_ClientSink(self, incoming.head, plain.extra), self._served)
        self._fast_exchange = exchange
        return exchange

    # -- serving from callbacks --

    def _dispatch(self) -> None:
        """After a read: the next request served at once if nothing else is being served and it needs no waiting,
        else by the worker (a busy worker goes on to the queue by itself)."""
        if self._fast is not None or self._plain is not None or not self._worker_waits:
            return
        if self.queue and self._broken is None and not self.lost and self._serve_at_once(self.queue[0]):
            return
        if self.queue or self._broken is not None:
            self._run_worker()

    def _serve_at_once(self, incoming: Incoming) -> bool:
        head, body = incoming.head, incoming.body
        if not body.finished or head.chunked or not head.target.startswith(b"/"):
            return False
        decision = self._decide(incoming)
        if decision is None:
            decision = _AS_SENT
        elif not isinstance(decision, PassThrough):
            return False  # the application's to answer
        data = body.whole() if decision.body is None else decision.body
        framed, lines = _framing(head, decision.body)  # as `_pass` frames it: the client's own body keeps its line
        extra = decision.extra_lines
        self._fast = incoming
        incoming.upstream_at = _clock()
        exchange = self.server.app.upstream.start(
            head.method, head.target, lines, data or None, _ClientSink(self, head, extra), self._served,
            framed=framed, authorized=head.authorized,
        )
        if exchange is None:
            self._fast = None
            return False  # no idle connection: the worker opens one
        self.queue.popleft()
        self.resume_reading()
        if not exchange.ended:
            self._fast_exchange = exchange
        return True

    def _served(self, exchange: Exchange, error: UpstreamError | None) -> None:
        """The end of a request served from callbacks (called as the cluster's last byte is parsed)."""
        incoming, self._fast, self._fast_exchange = self._fast, None, None
        sink = exchange.sink
        assert isinstance(sink, _ClientSink)
        if incoming is not None:
            incoming.upstream_s = _clock() - incoming.upstream_at
        if self.lost:
            self._report(incoming, exchange.status if sink.started else CLIENT_CLOSED, sink.sent, "client-closed")
            return
        if error is None:
            self._report(incoming, exchange.status, sink.sent, None)
            if sink.close:
                self.close()
                return
        elif sink.started or sink.exchange is not None:
            self._report(incoming, exchange.status, sink.sent, error.kind)
            self.abort()  # the head went out: cutting the connection is the only honest way to say it broke
            return
        elif exchange.retryable and incoming is not None:
            incoming.fresh = True  # once more, by the worker, on a new connection, with the body kept till now
            self.queue.appendleft(incoming)
            self._run_worker()
            return
        if incoming is not None:
            incoming.body.consume()
        if error is not None:
            failure = self._upstream_failure(error)
            self._report(incoming, failure.status, len(failure.body), error.kind)
            if not self._write_answer(sink.request, failure):
                self.close()
                return
        if self.queue or self._broken is not None or self.server.draining:
            self._run_worker()  # never a new exchange from inside this one's parser callback

    # -- the worker --

    def _run_worker(self) -> None:
        if self._worker is None:
            self._worker = self.loop.create_task(self._work())
        else:
            self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _report(self, incoming: Incoming | None, status: int, sent: int, error: str | None) -> None:
        """Tells the application a request was answered (once per request)."""
        finished = self.server.finished
        if finished is None or (incoming is not None and incoming.reported):
            return
        if incoming is not None:
            incoming.reported = True
        try:
            finished(incoming, status, sent, error)
        except Exception:  # a bug of ours in the bookkeeping: the answer itself is not affected
            log.exception("recording a finished request failed")

    async def _work(self) -> None:
        current: Incoming | None = None
        try:
            while not self.lost:
                if not self.queue:
                    if self._broken is not None:
                        self._report(None, self._broken.status, len(self._broken.body), None)
                        self.write(self._broken.serialize(close=True))
                        self.close()
                        return
                    if self.server.draining and not self._in_message:
                        self.close()
                        return
                    self._wakeup = self.loop.create_future()
                    await self._wakeup
                    self._wakeup = None
                    continue
                incoming = current = self.queue.popleft()
                self.resume_reading()
                if not await self._serve(incoming):
                    self.close()
                    return
                current = None
        except asyncio.CancelledError:
            if current is not None:  # the client left while it was served
                self._report(current, CLIENT_CLOSED, 0, "client-closed")
        except Exception:  # a bug of ours: this connection cannot be trusted any more, the others are unaffected
            log.exception("connection closed after an unexpected error")
            self.abort()

    async def _serve(self, incoming: Incoming) -> bool:
        """One request, answered; whether the connection can take the next one."""
        head = incoming.head
        if not head.target.startswith(b"/") and not (head.target == b"*" and head.method == "OPTIONS"):
            return await self._answer(incoming, es_error_reply(
                400, "illegal_argument_exception",
                f"{head.method} with a target that is not a path is not served: this is not a forward proxy"))
        decision = self._decide(incoming)
        if decision is None:
            return await self._pass(incoming, None, ())
        if isinstance(decision, PassThrough):
            return await self._pass(incoming, decision.body, decision.extra_lines)
        try:
            answer = await self.server.app.handle(incoming, decision)
        except UpstreamError as err:
            return await self._answer(incoming, self._upstream_failure(err), err.kind)
        except Exception as err:  # a bug of ours: said in the cluster's error format, the connection kept
            log.exception("error handling %s %r", head.method, head.target)
            return await self._answer(incoming, es_error_reply(
                500, "rerank_proxy_exception", f"{type(err).__name__}: {err}"))
        if isinstance(answer, Reply):
            return await self._answer(incoming, answer)
        return await self._pass(incoming, answer.body, answer.extra_lines)

    def _decide(self, incoming: Incoming) -> object | None:
        if incoming.decision is _UNDECIDED:
            incoming.decision = self.server.app.claims(incoming.head)
        return incoming.decision

    async def _answer(self, incoming: Incoming, reply: Reply, error: str | None = None) -> bool:
        head, body = incoming.head, incoming.body
        self._report(incoming, reply.status, 0 if head.method == "HEAD" else len(reply.body), error)
        return self._write_answer(head, reply, body) and (body.finished or await body.discard())

    def _write_answer(self, head: RequestHead, reply: Reply, body: ClientBody | None = None) -> bool:
        """Writes the proxy's own answer; whether the connection may take another request (once the rest of the
        body, if any, is read and dropped, unless its client was never told to send it)."""
        last = reply.close or self.closing or (body is not None and not body.finished and (
            body.awaits_continue or _declared(head) > DISCARD_LIMIT))
        self.write(reply.serialize(head.version, close=last and head.keep_alive, head_only=head.method == "HEAD"))
        return head.keep_alive and not last

    def _upstream_failure(self, err: UpstreamError) -> Reply:
        self.server.record_upstream_error(err)
        return es_error_reply(err.status, err.error_type, str(err))

    async def _pass(self, incoming: Incoming, body: bytes | None, extra: Sequence[bytes]) -> bool:
        head = incoming.head
        sink = _ClientSink(self, head, extra)
        upstream_body: bytes | ClientBody | None = body
        if body is None and not incoming.body.empty:
            if incoming.body.finished and not head.chunked:  # all here already: sent with the head in one write
                upstream_body = incoming.body.whole()
                incoming.body.consume()
            else:
                upstream_body = incoming.body
        framed, lines = _framing(head, body)
        incoming.upstream_at = _clock()
        try:
            await self.server.app.upstream.exchange(
                head.method, head.target, lines, upstream_body, sink, framed=framed, authorized=head.authorized,
                fresh=incoming.fresh,
            )
        except UpstreamError as err:
            incoming.upstream_s = _clock() - incoming.upstream_at
            if sink.started or sink.exchange is not None:
                status = sink.exchange.status if sink.exchange is not None else 0
                self._report(incoming, status, sink.sent, err.kind)
                self.abort()  # the head went out: cutting the connection is the only honest way to say it broke
                return False
            return await self._answer(incoming, self._upstream_failure(err), err.kind)
        incoming.upstream_s = _clock() - incoming.upstream_at
        self._report(incoming, sink.exchange.status if sink.exchange is not None else 0, sink.sent, None)
        return not sink.close and incoming.body.finished


def _framing(head: RequestHead, body: bytes | None) -> tuple[bool, list[bytes]]:
    """Whether the client's own `Content-Length` line goes on as sent, and the header lines to send: it does while
    the body is the client's (a skipped search's is the very bytes read); anything else is framed anew."""
    framed = not head.chunked and head.content_length is not None and (
        body is None or head.content_length == b"%d" % len(body)
    )
    return framed, head.lines_with_length() if framed else head.lines


def _declared(head: RequestHead) -> int:
    """The body length the client announced (0 for none or a chunked body)."""
    length = head.content_length
    return int(length) if length is not None and length.isdigit() else 0


class RelayServer:
    """The listening socket and its connections."""

    def __init__(self, app: Application, on_upstream_error: Callable[[UpstreamError], None] | None = None):
        self.app = app
        self.loop = asyncio.get_running_loop()
        self.connections: set[ClientConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_upstream_error = on_upstream_error
        self.finished: Finished | None = getattr(app, "finished", None)
        self._server: asyncio.Server | None = None
        self.draining = False
        self._drained: asyncio.Event | None = None

    @property
    def records(self) -> bool:
        """Whether `finished` keeps anything of a request: an application may say it does not (`records_requests`,
        an attribute, as it is asked of every request), so the plain lane builds no head for it."""
        return self.finished is not None and getattr(self.app, "records_requests", True)

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def record_upstream_error(self, err: UpstreamError) -> None:
        if self._on_upstream_error is not None:
            self._on_upstream_error(err)

    def forget(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if self._drained is not None and not self.connections:
            self._drained.set()

    async def listen(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> tuple[str, int]:
        self._server = await self.loop.create_server(
            lambda: ClientConnection(self), host, port, backlog=1024, reuse_address=True, ssl=tls
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    def stop_accepting(self) -> None:
        """New connections are refused from now on; the open ones finish the requests they have begun, then close."""
        self.draining = True
        self._drained = asyncio.Event()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.drain()
        if not self.connections:
            self._drained.set()

    async def drained(self, grace_s: float) -> int:
        """Waits up to `grace_s` for every connection to close; the connections still open then (cut by `close`)."""
        assert self._drained is not None, "stop_accepting first"
        try:
            await asyncio.wait_for(self._drained.wait(), grace_s)
        except TimeoutError:
            pass
        return len(self.connections)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

