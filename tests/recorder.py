"""A recording upstream: a raw socket server that keeps the exact request head bytes it received and answers
every request with bytes set by the test (HEAD: the same head, no body). Nothing is parsed on the way in beyond
finding where each request ends, so what it records is what the proxy wrote."""
from __future__ import annotations

import socket
import socketserver
import threading
from dataclasses import dataclass

import orjson

SEARCH_RESPONSE = orjson.dumps({
    "took": 1, "timed_out": False, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
    "hits": {"total": {"value": 3, "relation": "eq"}, "max_score": 1.5, "hits": [
        {"_index": "idx", "_id": str(i), "_score": 1.5 - i / 4, "_source": {"title": title, "text": text}}
        for i, (title, text) in enumerate([
            ("Cell biology", "Membranes and organelles."),
            ("Protein folding", "How a protein finds its native structure."),
            ("Gene expression", "Transcription of genes into RNA and protein."),
        ])
    ]},
})


def http_response(status: int = 200, reason: str = "OK", headers: list[tuple[str, str]] | None = None,
                  body: bytes = SEARCH_RESPONSE) -> bytes:
    """A Content-Length framed response; `headers` come first, in order and case as given."""
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers or []), f"content-length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


DEFAULT_RESPONSE = http_response(headers=[("X-elastic-product", "Elasticsearch"),
                                          ("content-type", "application/json")])
_ALIASES_NONE = http_response(body=b"{}", headers=[("content-type", "application/json")])


@dataclass(frozen=True)
class Recorded:
    head: bytes  # request line and headers, up to and including the blank line
    body: bytes

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def target(self) -> bytes:
        return self.request_line.split(b" ")[1]

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        lines = self.head.split(b"\r\n")[1:]
        return [(k, v.strip()) for k, _, v in (line.partition(b":") for line in lines if line)]


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


class _Reader:
    def __init__(self, sock: socket.socket):
        self.sock, self.buffer = sock, bytearray()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buffer += data

    def until(self, marker: bytes) -> bytes:
        while (at := self.buffer.find(marker)) < 0:
            self._fill()
        data = bytes(self.buffer[: at + len(marker)])
        del self.buffer[: at + len(marker)]
        return data

    def exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def chunked(self) -> bytes:
        body = bytearray()
        while size := int(self.until(b"\r\n").split(b";")[0], 16):
            body += self.exactly(size)
            self.exactly(2)
        self.until(b"\r\n")  # no trailers expected: the blank line
        return bytes(body)


class Recorder:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.response = DEFAULT_RESPONSE
        recorder = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                recorder._serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _serve(self, sock: socket.socket) -> None:
        reader = _Reader(sock)
        try:
            while True:
                head = reader.until(b"\r\n\r\n")
                length = _header(head, b"content-length")
                chunked = (_header(head, b"transfer-encoding") or b"").lower().endswith(b"chunked")
                body = reader.chunked() if chunked else reader.exactly(int(length or 0))
                recorded = Recorded(head, body)
                self.requests.append(recorded)
                sock.sendall(self._answer(recorded))
        except (EOFError, ConnectionError):
            return

    def _answer(self, request: Recorded) -> bytes:
        if b"/_alias" in request.target:
            return _ALIASES_NONE
        if request.request_line.startswith(b"HEAD "):
            return self.response.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        return self.response

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
