"""Connections to the cluster: a keep-alive pool of raw HTTP/1.1 connections (llhttp via httptools), failover to
the next URL, timeouts, and a connection reused only after a complete, clean exchange.

An exchange writes the request head as given (the relay already kept the client's bytes) and hands the response
to a sink as it arrives, so a pass-through response streams without being copied into Python objects twice. The
search path uses `fetch`, which collects the whole response.
"""
from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote, urlsplit

import httptools

from .config import Config, UpstreamOptions
from .plain import PlainResponse, plain_response
from .wire import Head, header_line

# Answers after which the cluster may have stopped reading the connection properly: Elasticsearch answers a too-long
# header with a well-framed 400 and then ignores that socket. The wire cannot tell that 400 from a query error's, so
# no connection is reused after any of these (a reconnect costs less than one stalled client).
_REFUSALS = frozenset({400, 408, 413, 414, 431})


class UpstreamError(Exception):
    """The cluster could not be asked or did not answer properly; `status`/`error_type` say how to tell the client."""

    status = 502
    error_type = "rerank_proxy_upstream_exception"
    kind = "broken"  # as `rerank_proxy_upstream_errors_total` and the access log name it


class UpstreamUnavailable(UpstreamError):
    """No upstream URL accepted the connection."""

    error_type = "rerank_proxy_upstream_unavailable_exception"
    kind = "unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    error_type = "rerank_proxy_upstream_timeout_exception"
    kind = "timeout"


class Sink(Protocol):
    """Where a response goes as it arrives; called on the event loop, in order, never after `end`."""

    def head(self, exchange: Exchange) -> None:
        """The response head has arrived: `exchange.status`, `.reason`, `.head`."""

    def body(self, chunk: bytes) -> None: ...

    def read_done(self) -> None:
        """One read of the cluster's socket has been parsed: a chance to write what it delivered in one go."""

    def end(self) -> None:
        """The response is complete; called before the exchange's `done` resolves."""


OnEnd = Callable[["Exchange", "UpstreamError | None"], None]


class PlainTaker(Protocol):
    """Who waits for the answer to a request sent by `Upstream.start_plain`."""

    def plain_answered(self, answer: PlainResponse) -> None:
        """The whole answer, plain, the connection already back in the pool (or closed)."""

    def plain_adopted(self, conn: _Connection) -> Exchange:
        """The answer is not plain, or did not come: the exchange as `start` would have begun it (by
        `conn.adopted`), which goes on from here (the parser, a retry, an ES-style error)."""


class RequestBody(Protocol):
    """A request body that arrives while the exchange runs (the relay's client stream)."""

    def attach(self, exchange: Exchange) -> None:
        """Write what has arrived to `exchange` now and the rest as it comes, then `exchange.end_body()`."""


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    host_header: bytes
    authorization: bytes | None = field(repr=False)  # from credentials in the URL, sent when the client sends none
    redacted: str  # the URL without its credentials: the only form that is logged or shown
    # What every request to this URL is sent with: its `Host`, and its credentials unless the client has its own.
    host_line: bytes = field(init=False)
    auth_line: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        auth = self.authorization
        object.__setattr__(self, "host_line", header_line(b"host", self.host_header))
        object.__setattr__(self, "auth_line", b"" if auth is None else header_line(b"authorization", auth))

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname or "127.0.0.1"
        netloc = f"[{host}]" if ":" in host else host
        netloc += f":{parts.port}" if parts.port else ""
        auth = None
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            auth = b"Basic " + base64.b64encode(token)
        return cls(parts.scheme, host, port, netloc.encode(), auth, f"{parts.scheme}://{netloc}{parts.path}")


def redact(url: str) -> str:
    return Endpoint.parse(url).redacted


def ssl_context(options: UpstreamOptions) -> ssl.SSLContext:
    tls = options.tls
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.client_cert:
        context.load_cert_chain(str(tls.client_cert), str(tls.client_key) if tls.client_key else None)
    return context


class Exchange:
    """One request and its response on one connection. `on_end(exchange, error)` is called once, when the response
    has ended (`error` None) or the exchange has failed (an UpstreamError), as the last byte is parsed: a caller
    that needs no coroutine (the relay's fast path) goes on from there, `Upstream.exchange` resolves a future."""

    __slots__ = (
        "conn", "sink", "head_only", "on_end", "ended", "head", "reason", "status", "request_sent", "answered",
        "response_started", "chunked_body", "timed_out", "reused", "_until_close",
    )

    def __init__(self, conn: _Connection, sink: Sink, head_only: bool, chunked_body: bool, on_end: OnEnd,
                 reused: bool):
        self.conn = conn
        self.sink = sink
        self.head_only = head_only
        self.chunked_body = chunked_body
        self.on_end = on_end
        self.ended = False
        self.head = Head()
        self.reason = b""
        self.status = 0
        self.request_sent = False
        self.answered = False  # a byte of the answer arrived: the cluster took the request, it is never sent again
        self.response_started = False
        self.timed_out = False
        self.reused = reused  # on a pooled connection, which the cluster may have closed meanwhile
        self._until_close = False

    @property
    def retryable(self) -> bool:
        """Failed on a kept connection the cluster had closed before it read the request (it answered nothing):
        worth sending once more on a new connection. Any answer, even a garbled one, means the request may have
        been carried out; the caller also checks that the body can be sent again."""
        return self.reused and not self.answered and not self.timed_out

    # -- request body, written by the caller or by an attached client stream --

    def write_body(self, chunk: bytes) -> None:
        if not chunk or self.ended:
            return
        if self.chunked_body:
            self.conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            self.conn.write(chunk)

    def end_body(self) -> None:
        if self.chunked_body and not self.ended:
            self.conn.write(b"0\r\n\r\n")
        self.request_sent = True

    def pause_body(self) -> bool:
        """Whether the upstream socket is backed up (the client stream then stops reading until `resumed`)."""
        return self.conn.write_paused

    async def resumed(self) -> None:
        await self.conn.drained()

    def pause_reading(self) -> None:
        """The client cannot take the answer as fast as the cluster sends it: stop reading the cluster."""
        if self.conn.transport is not None and self.conn.alive:
            self.conn.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.conn.transport is not None and self.conn.alive:
            self.conn.transport.resume_reading()

    # -- response, driven by the connection's parser --

    def on_head(self, status: int, keep_alive: bool, has_length: bool) -> None:
        self.status = status
        self.response_started = True
        self.conn.reusable = keep_alive and status not in _REFUSALS
        self._until_close = not has_length and not self.head_only and status not in (204, 304)
        if self.head.connection:
            self.head.finish()
        self.sink.head(self)

    def complete(self) -> None:
        if not self.ended:
            self.sink.end()
            self._end(None)

    def fail(self, error: UpstreamError) -> None:
        self.timed_out = self.timed_out or isinstance(error, UpstreamTimeout)
        if not self.ended:
            self._end(error)

    def abandon(self) -> None:
        """Nobody wants the answer any more (the client went away): the connection is cut, the exchange fails."""
        self.conn.abort()

    def _end(self, error: UpstreamError | None) -> None:
        self.ended = True
        conn = self.conn
        if error is not None:
            conn.abort()
        elif not self.request_sent:  # answered before the body was all sent: the connection is out of step
            conn.reusable = False
        conn.pool.release(conn)  # back to the pool before the caller goes on (kept only after a clean exchange)
        self.on_end(self, error)

    def lost(self, exc: Exception | None) -> None:
        if self._until_close and self.response_started:  # a body framed by the connection's end has ended
            self.complete()
        elif not self.response_started:
            self.fail(UpstreamError(f"the cluster closed the connection before answering ({exc or 'EOF'})"))
        else:
            self.fail(UpstreamError(f"the cluster closed the connection in the middle of its answer ({exc or 'EOF'})"))


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an upstream; its parser feeds the current exchange's sink."""

    def __init__(self, pool: _Pool):
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.taker: PlainTaker | None = None  # a plain exchange's, until answered or adopted
        self.reusable = False
        self.alive = True
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._deadline = 0.0
        self._limit = (0.0, "")
        self._timeout_error: UpstreamTimeout | None = None
        self.idle_since = 0.0

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        taker = self.taker
        if taker is not None:
            answer = plain_response(data)
            if answer is not None:
                self.taker = None
                pool = self.pool
                pool.busy.discard(self)  # `_cancel_timer`, said here: the lane's every step counts
                self.reusable = answer.keep_alive and answer.status not in _REFUSALS
                pool.release(self)
                taker.plain_answered(answer)
                return
            self._adopt()
        exchange = self.exchange
        if exchange is None:  # bytes nobody asked for: the connection is out of step, never reuse it
            self.abort()
            return
        self._touch()
        exchange.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            exchange.fail(UpstreamError(f"the cluster's answer is not valid HTTP: {err}"))
            self.abort()
            return
        if exchange.response_started:
            exchange.sink.read_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if self.taker is not None:
            self._adopt()
        self._cancel_timer()
        self.pool.forget(self)
        exchange = self.exchange
        if exchange is not None:
            if self._timeout_error is not None:
                exchange.fail(self._timeout_error)
            exchange.lost(exc)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- parser callbacks (httptools) --

    def on_status(self, reason: bytes) -> None:
        self.exchange.reason += reason  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        self.exchange.head.add(name, value)  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (the relay never asks for one): wait for the final one
            exchange.head, exchange.reason = Head(), b""
            return
        head = exchange.head
        has_length = head.content_length is not None or head.chunked
        self._arm(self.pool.pause_limit)
        exchange.on_head(status, self.parser.should_keep_alive(), has_length)
        if exchange.head_only:
            # llhttp cannot be told a response answers a HEAD: it would wait for the Content-Length's bytes.
            self.parser = httptools.HttpResponseParser(self)
            self._finish()

    def on_body(self, chunk: bytes) -> None:
        self.exchange.sink.body(chunk)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        if self.exchange is not None and self.exchange.response_started:
            self._finish()

    # -- the exchange's side --

    def _adopt(self) -> None:
        taker, self.taker = self.taker, None
        assert taker is not None
        taker.plain_adopted(self)

    def adopted(self, sink: Sink, on_end: OnEnd) -> Exchange:
        """The exchange of a plain request already sent on this (pooled) connection."""
        exchange = Exchange(self, sink, False, False, on_end, reused=True)
        exchange.request_sent = True
        self.exchange = exchange
        return exchange

    def start_plain(self, taker: PlainTaker, request: bytes) -> None:
        self.taker = taker
        self._send(request)

    def start(self, exchange: Exchange, request_head: bytes) -> None:
        self.exchange = exchange
        self._send(request_head)

    def _send(self, request: bytes) -> None:
        self.reusable = False
        self._timeout_error = None
        self._arm(self.pool.answer_limit)
        self.write(request)

    def write(self, data: bytes) -> None:
        if self.transport is not None and self.alive:
            self.transport.write(data)

    async def drained(self) -> None:
        if self.write_paused and self.alive:
            self._drain = self.loop.create_future()
            await self._drain

    def abort(self) -> None:
        self.reusable = False
        self.alive = False
        if self.transport is not None:
            self.transport.abort()

    def _finish(self) -> None:
        exchange = self.exchange
        self._cancel_timer()
        if exchange is not None:
            exchange.complete()

    # -- timeouts: a deadline per connection, checked by the pool's sweep (no timer handle per request) --

    def _arm(self, limit: tuple[float, str]) -> None:
        self._deadline = self.loop.time() + limit[0]
        self._limit = limit
        self.pool.watch(self)

    def _touch(self) -> None:
        if self.exchange is not None and self.exchange.response_started:
            self._deadline = self.loop.time() + self.pool.options.idle_timeout_s

    def _cancel_timer(self) -> None:
        self.pool.unwatch(self)

    def expire_if_due(self, now: float) -> None:
        if now < self._deadline:
            return
        seconds, what = self._limit
        self._timeout_error = UpstreamTimeout(f"the cluster {what} {seconds:g}s")
        if self.taker is not None:
            self._adopt()
        if self.exchange is not None:
            self.exchange.fail(self._timeout_error)
        self.abort()


class _Pool:
    """Connections to one URL: idle ones kept for reuse, at most `pool_size` open at once (others wait)."""

    def __init__(self, endpoint: Endpoint, options: UpstreamOptions, tls: ssl.SSLContext | None):
        self.endpoint = endpoint
        self.options = options
        self.tls = tls
        self.loop = asyncio.get_running_loop()
        # A connection's deadlines (seconds, and how a miss is told), made once rather than per request.
        self.answer_limit = (options.response_timeout_s, "did not answer within")
        self.pause_limit = (options.idle_timeout_s, "sent nothing more of its answer for")
        self.idle: deque[_Connection] = deque()
        self.open = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.down_until = 0.0
        self.busy: set[_Connection] = set()  # connections with an exchange under a deadline
        self._sweep: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None  # closes the idle connections unused for too long

    # Deadlines are checked this often, so a timeout fires up to this late: cheaper than a timer per request.
    SWEEP_S = 0.1

    def watch(self, conn: _Connection) -> None:
        self.busy.add(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_later(self.SWEEP_S, self._check_deadlines)

    def unwatch(self, conn: _Connection) -> None:
        self.busy.discard(conn)

    def _check_deadlines(self) -> None:
        now = self.loop.time()
        for conn in list(self.busy):
            conn.expire_if_due(now)
        self._sweep = self.loop.call_later(self.SWEEP_S, self._check_deadlines) if self.busy else None

    def take_idle(self) -> _Connection | None:
        while self.idle:
            conn = self.idle.pop()  # the most recently used: the least likely to have been closed by the cluster
            if conn.alive:
                return conn
        return None

    async def connect(self) -> _Connection:
        while self.open >= self.options.pool_size:
            waiter = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
            reused = self.take_idle()
            if reused is not None:
                return reused
        self.open += 1
        try:
            async with asyncio.timeout(self.options.connect_timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self), self.endpoint.host, self.endpoint.port, ssl=self.tls,
                    server_hostname=self.endpoint.host if self.tls else None,
                )
        except BaseException:
            self.open -= 1
            self._wake()
            raise
        return conn

    def release(self, conn: _Connection) -> None:
        """After an exchange: kept only if it ended cleanly and both sides said keep-alive."""
        conn.exchange = None
        if conn.alive and conn.reusable:
            conn.idle_since = self.loop.time()
            self.idle.append(conn)
            if self._expiry is None:
                self._expire_idle()
            if self.waiters:
                self._wake()
        else:
            conn.abort()  # `forget` frees its slot once the transport is gone

    def _expire_idle(self) -> None:
        """Closes the connections idle past `pool_idle_timeout_s`, oldest first (the left of `idle`: reuse takes
        from the right), so a burst of clients leaves no sockets open for ever; then waits for the next to expire."""
        self._expiry = None
        limit = self.options.pool_idle_timeout_s
        now = self.loop.time()
        while self.idle and self.idle[0].idle_since + limit <= now:
            self.idle.popleft().abort()
        if self.idle:
            self._expiry = self.loop.call_at(self.idle[0].idle_since + limit, self._expire_idle)

    def forget(self, conn: _Connection) -> None:
        self.open -= 1
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        self._wake()

    def _wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for timer in (self._sweep, self._expiry):
            if timer is not None:
                timer.cancel()
        self._sweep = self._expiry = None
        for conn in list(self.idle):
            conn.abort()
        self.idle.clear()


def _resolving(done: asyncio.Future[None]) -> OnEnd:
    """An `on_end` that resolves `done` (left alone once cancelled)."""

    def on_end(exchange: Exchange, error: UpstreamError | None) -> None:
        if not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    return on_end


@dataclass
class Collected:
    """A whole response, as `fetch` returns it."""

    status: int
    reason: bytes
    head: Head
    body: bytes


class _Collector:
    def __init__(self, limit: int):
        self.limit = limit
        self.status = 0
        self.reason = b""
        self.head_ = Head()
        self.chunks: list[bytes] = []
        self.size = 0
        self.exchange: Exchange | None = None

    def head(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.status, self.reason, self.head_ = exchange.status, exchange.reason, exchange.head

    def read_done(self) -> None:
        pass

    def end(self) -> None:
        pass

    def body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit and self.exchange is not None:
            self.exchange.fail(UpstreamError(f"the cluster's answer is larger than {self.limit} bytes"))
            self.exchange.conn.abort()
            return
        self.chunks.append(chunk)


class Upstream:
    """The configured cluster URLs, tried in order; a URL that refused a connection is tried last for a while."""

    def __init__(self, config: Config):
        options = config.upstream
        self.options = options
        endpoints = [Endpoint.parse(url) for url in config.upstreams]
        self.urls = [e.redacted for e in endpoints]
        tls = ssl_context(options) if any(e.scheme == "https" for e in endpoints) else None
        self._pools = [_Pool(e, options, tls if e.scheme == "https" else None) for e in endpoints]

    def _order(self) -> Sequence[_Pool]:
        """Healthy URLs first (in configured order), then the ones that failed recently."""
        pools = self._pools
        if len(pools) == 1 or not any(p.down_until for p in pools):
            return pools
        now = time.monotonic()
        return sorted(pools, key=lambda p: p.down_until > now)

    async def _connection(self, fresh: bool) -> tuple[_Connection, bool]:
        """A connection and whether it comes from the idle pool (and so may have been closed meanwhile)."""
        errors = []
        timed_out = 0
        for pool in self._order():
            conn = None if fresh else pool.take_idle()
            if conn is not None:
                return conn, True
            try:
                conn = await pool.connect()
            except (OSError, TimeoutError) as err:
                pool.down_until = time.monotonic() + self.options.retry_down_after_s
                timed_out += isinstance(err, TimeoutError)
                reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
                errors.append(f"{pool.endpoint.redacted}: {reason}")
                continue
            pool.down_until = 0.0
            return conn, False
        if errors and timed_out == len(errors):
            raise UpstreamTimeout("no cluster node accepted a connection within "
                                  f"{self.options.connect_timeout_s:g}s: " + "; ".join(errors))
        raise UpstreamUnavailable("; ".join(errors))

    def start(
        self,
        method: str,
        target: bytes,
        lines: Sequence[bytes],
        body: bytes | None,
        sink: Sink,
        on_end: OnEnd,
        *,
        framed: bool = False,
        authorized: bool = False,
    ) -> Exchange | None:
        """The exchange begun at once on an idle kept connection, without a coroutine (the relay's fast path):
        `on_end` hears how it ended, the connection already back in the pool. None when no connection to the
        (single) cluster URL is idle: the caller then awaits `exchange`, which connects, fails over and retries."""
        if len(self._pools) != 1:
            return None
        conn = self._pools[0].take_idle()
        if conn is None:
            return None
        return self._begin(conn, True, method, target, lines, body, sink, on_end, framed, authorized)

    def start_plain(
        self, taker: PlainTaker, method: str, target: bytes, lines: bytes, body: bytes, authorized: bool
    ) -> _Connection | None:
        """A plain request (its client's framing in `lines`) sent at once on an idle kept connection, its answer
        told to `taker`; the connection, which the caller may `abort` (its client gone). None as for `start`."""
        if len(self._pools) != 1:
            return None
        pool = self._pools[0]
        conn = pool.take_idle()
        if conn is None:
            return None
        endpoint = pool.endpoint
        conn.start_plain(taker, b"%s %s HTTP/1.1\r\n%s%s%s\r\n%s" % (
            method.encode(), target, endpoint.host_line, lines, b"" if authorized else endpoint.auth_line, body))
        return conn

    async def exchange(
        self,
        method: str,
        target: bytes,
        lines: Sequence[bytes],
        body: bytes | RequestBody | None,
        sink: Sink,
        *,
        framed: bool = False,
        authorized: bool = False,
        fresh: bool = False,
    ) -> None:
        """Sends one request and feeds its response to `sink`; returns once the response has ended.

        `lines` are the forwardable header lines. `framed`: they carry the body's `Content-Length` already (the
        client's own line, relayed with the client's own body); otherwise bytes get one and a streamed body goes
        chunked. `authorized`: the client sent its own `Authorization`, so credentials from the URL are not added.
        A pooled connection that turns out closed is retried once on a new one, when nothing was answered and the
        body can be sent again; `fresh`: that retry, on a new connection at once (and not retried again)."""
        idle = self._pools[0].take_idle() if len(self._pools) == 1 and not fresh else None  # without a coroutine
        conn, reused = (idle, True) if idle is not None else await self._connection(fresh=fresh)
        while True:
            done: asyncio.Future[None] = conn.loop.create_future()
            exchange = self._begin(conn, reused, method, target, lines, body, sink, _resolving(done), framed,
                                   authorized)
            try:
                await done
            except UpstreamError:
                if exchange.retryable and (body is None or isinstance(body, bytes)):
                    conn, reused = await self._connection(fresh=True)
                    continue
                raise
            except BaseException:  # cancelled: the client went away; the cluster's answer has nobody to go to
                exchange.abandon()
                raise
            return

    def _begin(
        self, conn: _Connection, reused: bool, method: str, target: bytes, lines: Sequence[bytes],
        body: bytes | RequestBody | None, sink: Sink, on_end: OnEnd, framed: bool, authorized: bool,
    ) -> Exchange:
        length = len(body) if isinstance(body, bytes) and body and not framed else None
        chunked = not framed and body is not None and not isinstance(body, bytes)
        exchange = Exchange(conn, sink, method == "HEAD", chunked, on_end, reused)
        head = self._request_head(conn.pool.endpoint, method, target, lines, length, chunked, authorized)
        if body is None or isinstance(body, bytes):
            conn.start(exchange, head + body if body else head)  # one write, one send()
            exchange.request_sent = True
        else:
            conn.start(exchange, head)
            body.attach(exchange)
        return exchange

    @staticmethod
    def _request_head(
        endpoint: Endpoint, method: str, target: bytes, lines: Sequence[bytes], length: int | None, chunked: bool,
        authorized: bool,
    ) -> bytes:
        parts = [b"%s %s HTTP/1.1\r\n%s" % (method.encode(), target, endpoint.host_line), *lines]
        if not authorized:
            parts.append(endpoint.auth_line)
        if length is not None:
            parts.append(b"content-length: %d\r\n" % length)
        elif chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    async def fetch(
        self,
        method: str,
        target: bytes,
        lines: Sequence[bytes],
        body: bytes | None,
        *,
        authorized: bool = False,
        limit: int = 1 << 30,
    ) -> Collected:
        collector = _Collector(limit)
        await self.exchange(method, target, lines, body, collector, authorized=authorized)
        return Collected(collector.status, collector.reason, collector.head_, b"".join(collector.chunks))

    async def get_json_bytes(self, target: bytes) -> bytes | None:
        reply = await self.fetch("GET", target, [b"accept: application/json\r\n"], None)
        return reply.body if reply.status == 200 else None

    async def close(self) -> None:
        for pool in self._pools:
            pool.close()
