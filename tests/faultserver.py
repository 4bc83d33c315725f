"""A fake HTTP upstream, only for the faults a real cluster cannot produce on demand.

Each request the proxy sends gets the next planned `Action` whose path prefix matches its target, else a normal
answer. Every connection is recorded (its requests, and when the proxy closed it), so a test can wait, with a
deadline, for what the proxy did upstream. Plain threads and blocking sockets: nothing here shares the proxy's loop.
"""
from __future__ import annotations

import enum
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

_READ = 65536


class Action(enum.Enum):
    OK = "ok"  # a complete keep-alive answer
    POISON = "poison"  # a complete 400, then all further input is swallowed: ES after a too-long header does this
    HANG = "hang"  # reads the request, never answers
    BAD_STATUS = "bad-status"  # a malformed status line, then silence with the socket kept open
    GARBAGE = "garbage"  # bytes that are not HTTP at all, then silence with the socket kept open


POISON_BODY = orjson.dumps({"error": {"root_cause": [{"type": "too_long_http_header_exception",
                                                      "reason": "HTTP header is larger than 16384 bytes."}],
                                      "type": "too_long_http_header_exception",
                                      "reason": "HTTP header is larger than 16384 bytes."}, "status": 400})
_BAD_STATUS = b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n"
_GARBAGE = b"\x00\xff\x13 this is not HTTP \xfe\r\n\r\n"


@dataclass
class Request:
    method: str
    target: str
    body: bytes
    connection: int  # index into FaultServer.connections
    action: Action  # how it was answered
    at: float = field(default_factory=time.monotonic)


@dataclass
class Connection:
    opened_at: float
    requests: list[Request] = field(default_factory=list)
    closed_at: float | None = None  # when the peer (the proxy) closed or reset it


@dataclass
class _Planned:
    action: Action
    path_prefix: str
    times: int | None  # None: until cleared


def _answer(status: str, body: bytes) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nX-elastic-product: Elasticsearch\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n")
    return head.encode() + body


def _ok_body(target: str) -> bytes:
    """Shaped like the cluster's answer for the path, so the proxy's search path can parse and rerank it."""
    if "_alias" in target:
        return orjson.dumps({})
    if "_search" in target:
        hits = [{"_index": "scifact", "_id": str(i), "_score": 3.0 - i,
                 "_source": {"title": f"fake title {i}", "text": f"fake text about vitamin D {i}"}} for i in range(3)]
        return orjson.dumps({"took": 1, "timed_out": False,
                             "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                             "hits": {"total": {"value": 3, "relation": "eq"}, "max_score": 3.0, "hits": hits}})
    return orjson.dumps({"_index": "idx", "_id": "1", "_version": 1, "found": True, "_source": {"title": "fake"}})


class _Reader:
    """Reads HTTP/1.1 requests off a blocking socket: a head, then a Content-Length or chunked body."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = bytearray()

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(_READ)
        except OSError:  # reset by the peer, or our own shutdown at stop
            return False
        self.buffer += data
        return bool(data)

    def _until(self, marker: bytes) -> bytes | None:
        while (end := self.buffer.find(marker)) < 0:
            if not self._fill():
                return None
        data = bytes(self.buffer[:end])
        del self.buffer[:end + len(marker)]
        return data

    def _exactly(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not self._fill():
                return None
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def _chunked(self) -> bytes | None:
        body = bytearray()
        while (line := self._until(b"\r\n")) is not None:
            size = int(line.split(b";")[0], 16)
            chunk = self._exactly(size + 2)  # the chunk and its CRLF
            if chunk is None:
                return None
            if size == 0:
                return bytes(body)
            body += chunk[:-2]
        return None

    def request(self) -> tuple[str, str, bytes] | None:
        """(method, target, body) of the next request; None once the peer has closed."""
        head = self._until(b"\r\n\r\n")
        if head is None:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._chunked()
        else:
            body = self._exactly(int(headers.get("content-length", "0")))
        return None if body is None else (method, target, body)

    def drain(self) -> None:
        """Swallows everything until the peer closes: the socket stays open but never answers."""
        while self._fill():
            self.buffer.clear()


class FaultServer:
    """A loopback HTTP server whose misbehaviour each test plans; use as a context manager."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # lets the accept loop see `stop`
        self.address: tuple[str, int] = self._listener.getsockname()
        self.url = f"http://127.0.0.1:{self.address[1]}"
        self.connections: list[Connection] = []
        self._plan: list[_Planned] = []
        self._sockets: list[socket.socket] = []
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- what tests call --------------------------------------------------------------------------------------

    def plan(self, action: Action, path_prefix: str = "/", times: int | None = 1) -> None:
        """The next `times` requests whose target starts with `path_prefix` get `action` (None: until cleared)."""
        with self._changed:
            self._plan.append(_Planned(action, path_prefix, times))

    def clear_plan(self) -> None:
        with self._changed:
            self._plan.clear()

    def requests(self, path_prefix: str = "/", action: Action | None = None) -> list[Request]:
        """Those seen so far whose target starts with `path_prefix` (and answered per `action`), in arrival order."""
        with self._changed:
            seen = [r for c in self.connections for r in c.requests if r.target.startswith(path_prefix)]
        return sorted((r for r in seen if action is None or r.action is action), key=lambda r: r.at)

    def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Waits until `condition()` (run under the server's lock) holds; fails naming `what` if it never does."""
        with self._changed:
            if not self._changed.wait_for(condition, timeout_s):
                raise AssertionError(f"after {timeout_s} s still waiting for: {what}")

    # ---- the server -------------------------------------------------------------------------------------------

    def __enter__(self) -> FaultServer:
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._threads[0].join(5)  # the accept loop first: no connection can then arrive unseen by the shutdown below
        with self._changed:
            for sock in self._sockets:
                _shutdown(sock)
        for thread in self._threads[1:]:
            thread.join(5)
        self._listener.close()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(None)
            with self._changed:
                self.connections.append(Connection(time.monotonic()))
                self._sockets.append(sock)
                number = len(self.connections) - 1
                self._changed.notify_all()
            self._spawn(self._serve, sock, number)

    def _next_action(self, target: str) -> Action:
        for planned in self._plan:
            if target.startswith(planned.path_prefix):
                if planned.times is not None:
                    planned.times -= 1
                    if planned.times == 0:
                        self._plan.remove(planned)
                return planned.action
        return Action.OK

    def _serve(self, sock: socket.socket, number: int) -> None:
        reader = _Reader(sock)
        try:
            while (parsed := reader.request()) is not None:
                method, target, body = parsed
                with self._changed:
                    action = self._next_action(target)
                    self.connections[number].requests.append(Request(method, target, body, number, action))
                    self._changed.notify_all()
                if not self._act(action, sock, target):
                    reader.drain()  # the connection is spoilt: keep it open and silent until the proxy closes it
                    break
        finally:
            if not self._stopping.is_set():
                with self._changed:
                    self.connections[number].closed_at = time.monotonic()
                    self._changed.notify_all()
            sock.close()

    @staticmethod
    def _act(action: Action, sock: socket.socket, target: str) -> bool:
        """Answers per `action`; False when the connection must not serve another request."""
        try:
            if action is Action.OK:
                sock.sendall(_answer("200 OK", _ok_body(target)))
                return True
            if action is Action.POISON:
                sock.sendall(_answer("400 Bad Request", POISON_BODY))
            elif action is Action.BAD_STATUS:
                sock.sendall(_BAD_STATUS)
            elif action is Action.GARBAGE:
                sock.sendall(_GARBAGE)
        except OSError:
            pass  # the proxy already went away; the read that follows sees the close
        return False


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
