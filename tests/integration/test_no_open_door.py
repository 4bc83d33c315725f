"""No open door: the proxy connects to its configured cluster and model servers only, whatever a client sends, and
no credential (in an upstream URL, a client's headers or a model's key) appears in a response, a log line or a
metric, at any log level."""
from __future__ import annotations

import base64
import logging
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import proxy_config
from tests.proxyrunner import MINILM, RunningProxy
from tests.rawhttp import RawConnection, RawResponse, exchange

URL_SECRET = "url-pa55word-7f3a"
CLIENT_SECRET = "client-pa55word-91c2"
API_KEY = "apikey-secret-5d1e"
BEARER = "bearer-secret-a8b0"
MODEL_KEY = "model-key-secret-33aa"
SECRETS = [URL_SECRET, CLIENT_SECRET, API_KEY, BEARER, MODEL_KEY]


def _forms(secret: str) -> list[bytes]:
    """The secret and the encodings it could leak in (a Basic header's base64 of `user:secret`)."""
    return [secret.encode(), base64.b64encode(f"elastic:{secret}".encode()), base64.b64encode(secret.encode())]


def assert_no_secret(data: bytes | str, where: str) -> None:
    blob = data.encode() if isinstance(data, str) else data
    for secret in SECRETS:
        for form in _forms(secret):
            assert form not in blob, f"{secret} appeared in {where}"


class Trap:
    """A listener nobody should ever connect to: counts the connections it is offered."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def trap() -> Iterator[Trap]:
    trap = Trap()
    yield trap
    trap.close()


def _with_credentials(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://elastic:{URL_SECRET}@{parts.netloc}{parts.path}"


@pytest.fixture(scope="module")
def guarded(scifact_es: str, tmp_path_factory) -> Iterator[RunningProxy]:
    """A proxy whose upstream URL holds credentials, with a remote model whose key is in the environment (its
    service does not exist: it never loads, and says so)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RERANK_TEST_MODEL_KEY", MODEL_KEY)
    remote = {"backend": "remote", "source": "http://127.0.0.1:9", "api_key_env":
              "RERANK_TEST_MODEL_KEY", "timeout_s": 1, "retries": 0}
    config = proxy_config(_with_credentials(scifact_es), models={"minilm": MINILM, "remote": remote})
    config["variants"]["remote"] = {"model": "remote"}
    with RunningProxy(config) as running:
        yield running
    mp.undo()


def _hostile_requests(port: int) -> list[bytes]:
    elsewhere = f"127.0.0.1:{port}"
    plain = "GET /scifact/_doc/1 HTTP/1.1\r\n"
    return [
        f"CONNECT {elsewhere} HTTP/1.1\r\nHost: {elsewhere}\r\n\r\n".encode(),
        f"GET http://{elsewhere}/ HTTP/1.1\r\nHost: {elsewhere}\r\n\r\n".encode(),
        f"POST http://{elsewhere}/scifact/_search HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode(),
        f"GET //{elsewhere}/scifact/_doc/1 HTTP/1.1\r\nHost: {elsewhere}\r\n\r\n".encode(),
        f"{plain}Host: {elsewhere}\r\n\r\n".encode(),
        f"{plain}Host: x\r\nX-Forwarded-Host: {elsewhere}\r\nForwarded: host={elsewhere}\r\n\r\n".encode(),
        f"{plain}Host: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n".encode(),
        f"GET /scifact/_search HTTP/1.1\r\nHost: {elsewhere}\r\nX-Rerank-Variant: remote\r\n\r\n".encode(),
        f"GET /_rerank_proxy/../{elsewhere}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"OPTIONS * HTTP/1.1\r\nHost: {elsewhere}\r\n\r\n".encode(),
        f"GET @{elsewhere}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"GET {elsewhere} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    ]


def _send(url: str, request: bytes) -> RawResponse | None:
    with RawConnection(url, timeout_s=30) as conn:
        conn.send(request)
        try:
            return conn.response(head=request.startswith(b"HEAD"))
        except (ConnectionError, OSError):
            return None


def test_no_request_makes_the_proxy_connect_elsewhere(guarded, trap):
    for url in (guarded.url, guarded.admin_url):
        for request in _hostile_requests(trap.port):
            answer = _send(url, request)
            if answer is not None:
                assert answer.status < 500 or answer.status == 502 and b"rerank_proxy" in answer.body, request
    assert trap.accepted == 0


def _client_calls() -> list[tuple[str, str, list[tuple[str, str]], bytes | None]]:
    basic = base64.b64encode(f"elastic:{CLIENT_SECRET}".encode()).decode()
    search = b'{"query": {"match": {"title": "vitamin D"}}}'
    calls = []
    for auth in (f"Basic {basic}", f"ApiKey {API_KEY}", f"Bearer {BEARER}"):
        headers = [("Authorization", auth), ("Content-Type", "application/json")]
        calls += [
            ("GET", "/scifact/_doc/nope", headers, None),
            ("POST", "/scifact/_search", headers, search),
            ("POST", "/scifact/_search", [*headers, ("X-Rerank", "off")], search),
            ("POST", "/scifact/_search", [*headers, ("X-Rerank-Variant", "remote")], search),
            ("POST", "/scifact/_search", headers, b'{"query": {"bad": 1}}'),
            ("POST", "/scifact/_msearch", [("Authorization", auth), ("Content-Type", "application/x-ndjson")],
             b'{}\n' + search + b"\n"),
        ]
    return calls


def test_no_secret_in_responses_logs_or_metrics(guarded, caplog):
    caplog.set_level(logging.DEBUG)
    answers = []
    for method, path, headers, body in _client_calls():
        answers.append(exchange(guarded.url, method, path, headers, body))
    for path in ("/_rerank_proxy/health", "/_rerank_proxy/metrics", "/_rerank_proxy/ready"):
        answers.append(exchange(guarded.admin_url, "GET", path))
    statuses = [a.status for a in answers]
    assert statuses.count(200) >= 10, statuses  # the calls were served, not refused for some other reason
    for answer in answers:
        assert_no_secret(b"".join(k + b": " + v for k, v in answer.headers) + answer.body, "a response")
    assert_no_secret("\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}"
                               for r in caplog.records), "the log")
    # The remote model never loaded, and its state says why without its key or URL credentials.
    health = exchange(guarded.admin_url, "GET", "/_rerank_proxy/health").body.decode()
    assert '"remote":"error: ' in health


def test_no_secret_when_the_cluster_is_unreachable(caplog):
    caplog.set_level(logging.DEBUG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed
    config = proxy_config(f"http://elastic:{URL_SECRET}@127.0.0.1:{closed}")
    with RunningProxy(config) as running:
        answers = [exchange(running.url, "GET", "/scifact/_doc/1"),
                   exchange(running.url, "POST", "/scifact/_search", [("Content-Type", "application/json")], b"{}"),
                   exchange(running.admin_url, "GET", "/_rerank_proxy/health")]
    assert [a.status for a in answers] == [502, 502, 200]
    for answer in answers:
        assert_no_secret(answer.body, "a response")
    assert f"127.0.0.1:{closed}".encode() in answers[0].body  # the URL is named, without its credentials
    assert_no_secret("\n".join(r.getMessage() for r in caplog.records), "the log")
