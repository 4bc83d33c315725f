"""HTTP/1.1 the way a hostile client speaks it: exact request bytes on a raw socket, responses framed by llhttp
(httptools), nothing normalised on either side."""
from __future__ import annotations

import socket
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools


@dataclass
class RawResponse:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # as received: order and case kept
    body: bytes  # the payload, chunked framing removed
    arrived_s: float = 0.0  # seconds from the request's last byte sent to the response's complete arrival

    def header(self, name: str) -> bytes | None:
        wanted = name.lower().encode()
        return next((v for k, v in self.headers if k.lower() == wanted), None)


@dataclass
class _Message:
    reason: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)


class _Collector:
    """httptools callbacks: completed responses queue up in order, an interim `100 Continue` included."""

    def __init__(self) -> None:
        self.current = _Message()
        self.done: deque[tuple[int, _Message]] = deque()
        self.headers_done = False
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.current = _Message()
        self.headers_done = False

    def on_status(self, reason: bytes) -> None:
        self.current.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self.current))


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


class RawConnection:
    """One keep-alive connection: `send` exact bytes, `response` reads the next complete response."""

    def __init__(self, url: str, timeout_s: float = 60.0):
        self.sock = socket.create_connection(host_port(url), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._collector = _Collector()
        self._sent_at = time.perf_counter()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self._sent_at = time.perf_counter()

    def response(self, *, head: bool = False) -> RawResponse:
        """The next response; `head`: it answers a HEAD, so it ends with its headers whatever they announce."""
        collector = self._collector
        while not collector.done and not (head and collector.headers_done):
            data = self.sock.recv(65536)
            if not data:
                collector.parser.feed_data(b"")  # EOF ends a response framed by the connection's close
                if not collector.done:
                    raise ConnectionError("connection closed before a complete response")
                break
            try:
                collector.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                pass
        arrived = time.perf_counter() - self._sent_at
        if collector.done:
            status, message = collector.done.popleft()
        else:  # a HEAD answer, cut at its headers
            status, message = collector.parser.get_status_code(), collector.current
        return RawResponse(status, message.reason, message.headers, bytes(message.body), arrived)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request_bytes(method: str, target: str, headers: list[tuple[str, str]] | None = None,
                  body: bytes | None = None, host: str = "localhost") -> bytes:
    """A request exactly as written: the target is not parsed, quoted or normalised."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    if body is not None and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers or []):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def exchange(url: str, method: str, target: str, headers: list[tuple[str, str]] | None = None,
             body: bytes | None = None) -> RawResponse:
    """One request on a fresh connection and its final response."""
    with RawConnection(url) as conn:
        conn.send(request_bytes(method, target, headers, body))
        response = conn.response(head=method == "HEAD")
        while 100 <= response.status < 200:
            response = conn.response(head=method == "HEAD")
        return response
