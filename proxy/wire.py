"""HTTP/1.1 messages as the relay sees them: raw bytes kept, a decoded copy only where the proxy must read.

The relay never rebuilds what it forwards from a parsed form: the request target and every header line go on as
the client sent them, bar the hop-by-hop ones (RFC 9110 7.6.1), which belong to one connection. Pure code: no
sockets here.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

# Per-connection headers, never forwarded in either direction. `Host` is the upstream's own, set by the relay;
# `Content-Length`/`Transfer-Encoding` are framing, re-stated by whoever writes the body.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"host",
})
_SPECIAL = HOP_BY_HOP | {b"content-length", b"expect"}
REQUEST_SPECIAL = _SPECIAL | {b"authorization"}  # plus `X-Rerank*`, the proxy's own
_REASONS = {
    200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found", 413: b"Request Entity Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
}


def header_line(name: bytes, value: bytes) -> bytes:
    return name + b": " + value + b"\r\n"


@dataclass(slots=True)
class Head:
    """One message's head: its header lines split into what is forwarded and what the relay must know."""

    lines: list[bytes] = field(default_factory=list)  # forwardable `Name: value\r\n` lines, in order, raw
    content_length: bytes | None = None  # raw value; framing, so its line is kept apart from `lines`
    length_line: bytes | None = None
    length_at: int = 0  # where the `Content-Length` line stood among `lines`
    chunked: bool = False
    connection: bytes = b""  # the `Connection` header's value, lowercased
    expect: bytes | None = None

    def add(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower not in _SPECIAL:  # the usual header: one set lookup, one line
            self.lines.append(name + b": " + value + b"\r\n")
            return
        if lower == b"content-length":
            self.content_length = value.strip()
            self.length_line, self.length_at = header_line(name, value), len(self.lines)
        elif lower == b"expect":
            self.expect = value.strip().lower()
            if self.expect != b"100-continue":  # answered by the relay itself; any other expectation is the cluster's
                self.lines.append(header_line(name, value))
        elif lower == b"connection":
            self.connection = (self.connection + b"," + value.lower()) if self.connection else value.lower()
        elif lower == b"transfer-encoding":
            self.chunked = self.chunked or b"chunked" in value.lower()

    def finish(self) -> None:
        """Drops what `Connection` names as per-connection (rare: after every header, with its own pass)."""
        named = {t.strip() for t in self.connection.split(b",")} - {b"", b"close", b"keep-alive"}
        if named:
            self.lines = [line for line in self.lines if line.split(b":", 1)[0].strip().lower() not in named]

    def lines_with_length(self) -> list[bytes]:
        """The forwardable lines with the `Content-Length` line back where it stood: a relayed response's head."""
        if self.length_line is None:
            return self.lines
        return [*self.lines[: self.length_at], self.length_line, *self.lines[self.length_at :]]

    def get(self, name: str) -> str | None:
        """A forwarded header's value (read by the search path on the cluster's answers)."""
        wanted = name.lower().encode()
        for line in self.lines:
            key, _, value = line.partition(b":")
            if key.strip().lower() == wanted:
                return value.strip().decode("latin-1")
        return None

    def without(self, names: Iterable[bytes]) -> list[bytes]:
        drop = frozenset(names)
        return [line for line in self.lines if line.split(b":", 1)[0].strip().lower() not in drop]


class RequestFacts:
    """What routing reads off a request (its method, target and the proxy's own headers), whichever reader made it:
    `RequestHead` from llhttp's callbacks, or the plain lane's `PlainRequest` (which builds no head for it)."""

    __slots__ = ()
    method: str
    target: bytes  # as received: the raw path and query
    own: list[tuple[bytes, bytes]]  # the proxy's own headers (`X-Rerank*`), as received

    def header_view(self) -> HeaderView:
        raise NotImplementedError

    def own_header(self, name: bytes) -> bytes | None:
        """One of the proxy's own headers (`name` lowercased), the first if repeated, as `header_view` reads it."""
        for key, value in self.own:
            if key.lower() == name:
                return value
        return None

    @property
    def raw_path(self) -> bytes:
        return self.target.partition(b"?")[0]

    @property
    def raw_query(self) -> bytes:
        return self.target.partition(b"?")[2]

    @property
    def path(self) -> str:
        """The decoded path, for the proxy's own routing only: never forwarded."""
        return unquote(self.raw_path.decode("latin-1"), errors="surrogateescape")

    def query(self) -> list[tuple[str, str]]:
        return query_pairs(self.raw_query)


@dataclass(slots=True)
class RequestHead(Head, RequestFacts):
    method: str = "GET"
    target: bytes = b"/"  # as received: the raw path and query
    version: str = "1.1"
    keep_alive: bool = True
    authorized: bool = False  # the client sent its own `Authorization`
    size: int = 0  # bytes of header names and values, for the relay's limit
    pairs: list[tuple[bytes, bytes]] = field(default_factory=list)  # every header as received, raw
    own: list[tuple[bytes, bytes]] = field(default_factory=list)  # the proxy's own (`X-Rerank*`), also in `pairs`

    def add(self, name: bytes, value: bytes) -> None:
        self.size += len(name) + len(value) + 4
        self.pairs.append((name, value))
        lower = name.lower()
        if lower not in REQUEST_SPECIAL and lower[:8] != b"x-rerank":  # the usual header: forwarded as it came
            self.lines.append(name + b": " + value + b"\r\n")
            return
        if lower[:8] == b"x-rerank" and (len(lower) == 8 or lower[8:9] == b"-"):
            self.own.append((name, value))
            return  # `X-Rerank` and `X-Rerank-*` are the proxy's own: read here, never forwarded
        if lower == b"authorization":
            self.authorized = True
        Head.add(self, name, value)

    def header_view(self) -> HeaderView:
        return HeaderView(self.pairs)


class HeaderView(Mapping[str, str]):
    """The request's headers read case-insensitively (the first of repeated ones), decoded as latin-1 (which never
    fails), for the search path."""

    __slots__ = ("_by_name",)

    def __init__(self, pairs: list[tuple[bytes, bytes]]):
        self._by_name = {k.lower().decode("latin-1"): v.decode("latin-1") for k, v in reversed(pairs)}

    def __getitem__(self, name: str) -> str:
        return self._by_name[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:
        return self._by_name.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)


def query_pairs(raw_query: bytes) -> list[tuple[str, str]]:
    """Decoded `key=value` pairs in order, as the cluster reads them (`+` is a space, blanks kept)."""
    if not raw_query:
        return []
    return parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True, errors="surrogateescape")


def filtered_target(raw_path: bytes, raw_query: bytes, keep: Sequence[tuple[str, str]]) -> bytes:
    """The client's target with only the query pairs in `keep` left, each kept pair byte for byte as sent.

    The search path drops the parameters it takes over (`filter_path`, `_source`, paging); it never re-encodes
    what it leaves, so `q=%ZZ` or `a%2Cb` reach the cluster as the client wrote them."""
    wanted = list(keep)
    out: list[bytes] = []
    for piece in raw_query.split(b"&") if raw_query else ():
        pair = query_pairs(piece)
        decoded = pair[0] if pair else None
        if decoded is not None and decoded in wanted:
            wanted.remove(decoded)
            out.append(piece)
    out += [f"{quote(k, safe=',*')}={quote(v, safe=',*')}".encode() for k, v in wanted]
    return raw_path + (b"?" + b"&".join(out) if out else b"")


@dataclass(slots=True)
class Reply:
    """A whole response the proxy itself answers with (an error, an admin page, a rewritten search)."""

    status: int
    reason: bytes
    lines: list[bytes]  # header lines, without framing; Content-Length is added when serialised
    body: bytes
    close: bool = False  # the connection ends after this answer (the relay says `Connection: close`)
    version: str | None = None  # the status line's HTTP version; None: the client's, as the clusters answer

    def serialize(self, client_version: str = "1.1", close: bool = False, head_only: bool = False) -> bytes:
        version = self.version or client_version
        parts = [b"HTTP/%s %d %s\r\n" % (version.encode(), self.status, self.reason), *self.lines]
        if self.status >= 200 and self.status not in (204, 304):
            parts.append(b"content-length: %d\r\n" % len(self.body))
        if close:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if not head_only:
            parts.append(self.body)
        return b"".join(parts)


def reason_for(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def json_reply(status: int, body: bytes) -> Reply:
    return Reply(status, reason_for(status), [b"content-type: application/json\r\n"], body)
