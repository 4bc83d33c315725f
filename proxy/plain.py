"""The usual message, whole in one read, recognised without the parser: what the relay's plain lane carries.

Most requests and answers arrive whole in one read in the plainest form HTTP/1.1 has: `Name: value` lines of
visible ASCII, framed by one `Content-Length` (an answer also by chunks without extensions or trailers). One regular
expression recognises them, and one loop over their headers gives what the relay forwards. Anything else (a
partial or pipelined read, HTTP/1.0, `HEAD`, other bytes or framing, `Expect`, `Upgrade`, a `Connection` that names
headers, llhttp's reading of `Proxy-Connection`) gives None and goes to llhttp, which stays the judge of everything
unusual. Why a second reader: a request's cost is mostly the cache misses of the code it runs, and one match and
one loop touch far less than a dozen parser callbacks and the objects they build. `request_head` gives the very
head the callbacks would have built, for when the relay needs one; tests/unit/test_plain_messages.py holds both
readers to the same answers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .wire import HOP_BY_HOP, REQUEST_SPECIAL, HeaderView, RequestFacts, RequestHead

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_FIELD = _TOKEN + rb": [!-~][ -~]*\r\n"  # llhttp drops the space before a value and keeps what trails it
_REQUEST = re.compile(rb"(GET|POST|PUT|DELETE|PATCH|OPTIONS) (/[!-~]*) HTTP/1\.1\r\n((?:" + _FIELD + rb")*)\r\n")
_RESPONSE = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9]) ([ -~]*)\r\n((?:" + _FIELD + rb")*)\r\n")
_FIELDS = re.compile(rb"(" + _TOKEN + rb"): ([^\r]*)\r\n")
_CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]{1,8})\r\n")
_CHUNKED = b"\ntransfer-encoding: chunked\r\n"  # a whole line of a lowercased head
MAX_PLAIN = 64 * 1024  # a larger read is the parser's, and its limits'
_PLAIN_CONNECTION = (b"", b"keep-alive", b"close")


@dataclass(slots=True)
class PlainRequest(RequestFacts):
    """A plain request as the lane forwards it; routing reads it as it reads a `RequestHead`."""

    method: str
    target: bytes  # as sent
    fields: bytes  # the header lines, as sent
    body: bytes
    lines: bytes  # the header lines forwarded: all but the hop-by-hop ones and the proxy's own, in order
    own: list[tuple[bytes, bytes]]  # the proxy's own headers (`X-Rerank*`), as sent
    authorized: bool  # the client sent its own `Authorization`
    keep_alive: bool

    def header_view(self) -> HeaderView:
        return HeaderView(_FIELDS.findall(self.fields))


@dataclass(slots=True)
class PlainResponse:
    status: int
    reason: bytes
    lines: bytes  # the header lines relayed: all but the hop-by-hop ones (`Content-Length` where it stood)
    body: bytes  # the body, or its chunks joined when `chunks` is not None
    chunks: list[bytes] | None  # a chunked answer's chunks, as the cluster cut them
    keep_alive: bool


def _plain_fields(names: bytes) -> bool:
    """No header that changes how the message is read (`names`: the lowercased head), one `Content-Length` at most."""
    return (b"transfer-encoding" not in names and b"expect" not in names and b"upgrade" not in names
            and b"proxy-connection" not in names and names.count(b"content-length:") <= 1)


def plain_request(data: bytes) -> PlainRequest | None:
    """`data` as one whole plain request; None: llhttp's to read."""
    if len(data) > MAX_PLAIN:
        return None
    match = _REQUEST.match(data)
    if match is None:
        return None
    method, target, fields = match.groups()
    if not _plain_fields(fields.lower()):
        return None
    kept = []
    own = []
    length = connection = None
    authorized = False
    for name, value in _FIELDS.findall(fields):
        lower = name.lower()
        if lower in REQUEST_SPECIAL or lower[:8] == b"x-rerank":  # as `RequestHead.add` sorts them
            if lower == b"content-length":
                length = value.strip()  # the client's own framing, kept where it stood
            elif lower == b"authorization":
                authorized = True
            elif lower == b"connection":
                if connection is not None:
                    return None
                connection = value.lower()
                continue
            elif lower in HOP_BY_HOP:
                continue
            elif len(lower) == 8 or lower[8:9] == b"-":
                own.append((name, value))
                continue
        kept.append(name + b": " + value + b"\r\n")
    body = data[match.end():]
    declared = 0 if length is None else int(length) if length.isdigit() else -1
    if connection not in (None, b"keep-alive", b"close") or len(body) != declared:
        return None
    return PlainRequest(method.decode(), target, fields, body, b"".join(kept), own, authorized,
                        connection != b"close")


def request_head(plain: PlainRequest) -> RequestHead:
    """The head the parser's callbacks build for the same bytes."""
    head = RequestHead(method=plain.method, target=plain.target, keep_alive=plain.keep_alive)
    for name, value in _FIELDS.findall(plain.fields):
        head.add(name, value)
    return head


def plain_response(data: bytes) -> PlainResponse | None:
    """`data` as one whole plain final answer to a request that was not `HEAD`; None: llhttp's to read."""
    if len(data) > MAX_PLAIN:
        return None
    match = _RESPONSE.match(data)
    if match is None:
        return None
    status, reason, fields = match.groups()
    names = b"\n" + fields.lower()
    chunked = _CHUNKED in names
    if chunked:  # the one framing header allowed here, said plainly and once
        names = names.replace(_CHUNKED, b"\n", 1)
    if not _plain_fields(names) or status in (b"204", b"304"):
        return None
    kept = []
    length = connection = None
    for name, value in _FIELDS.findall(fields):
        lower = name.lower()
        if lower in HOP_BY_HOP:  # as `Head.add` sorts them (`Expect` is not plain)
            if lower == b"connection":
                if connection is not None:
                    return None
                connection = value.lower()
            continue
        if lower == b"content-length":
            length = value.strip()
        kept.append(name + b": " + value + b"\r\n")
    if connection not in (None, b"keep-alive", b"close") or (length is None) != chunked:
        return None
    end = match.end()
    chunks = None
    if chunked:
        chunks = _whole_chunks(data, end)
        if chunks is None:
            return None
        body = b"".join(chunks)
    elif length is not None and length.isdigit() and len(data) - end == int(length):
        body = data[end:]
    else:
        return None
    return PlainResponse(int(status), reason, b"".join(kept), body, chunks, connection != b"close")


def _whole_chunks(data: bytes, at: int) -> list[bytes] | None:
    """A chunked body that ends exactly where `data` does; None otherwise."""
    chunks: list[bytes] = []
    while True:
        size_line = _CHUNK_SIZE.match(data, at)
        if size_line is None:
            return None
        size, at = int(size_line.group(1), 16), size_line.end()
        if size == 0:
            return chunks if data[at:] == b"\r\n" else None
        if data[at + size:at + size + 2] != b"\r\n":
            return None
        chunks.append(data[at:at + size])
        at += size + 2
