"""The relay benchmarks' reference arms (rerank_proxy_tools/anchors.py) on CPU: the nginx and HAProxy configs they render
are accepted by the real binaries and relay a request with the target and keep-alive intact, so a benchmark run never
starts by finding them broken. Needs the Debian packages `nginx` and `haproxy` (CI installs them); skipped without."""
from __future__ import annotations

import http.client
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks import passthrough_cpu
from rerank_proxy_tools import anchors

NGINX = anchors.find_binary("nginx")
HAPROXY = anchors.find_binary("haproxy")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian package `nginx`)")
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (Debian package `haproxy`)")
RAW_TARGET = "/idx/_doc/%2e%2e?q=%ZZ&x=1"  # what a relay must not normalise


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the cluster speaks
    seen: list[tuple[str, str]] = []  # (request target, Connection header) per request but the readiness probe

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path != "/":  # anchors.wait_ready's `GET /`
            self.seen.append((self.path, self.headers.get("Connection", "")))
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    _Upstream.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def relay_twice(launched: anchors.Launched) -> list[int]:
    """Two requests on one client connection; their statuses."""
    connection = http.client.HTTPConnection("127.0.0.1", launched.port, timeout=10)
    try:
        statuses = []
        for _ in range(2):
            connection.request("GET", RAW_TARGET)
            response = connection.getresponse()
            assert response.read() == b'{"ok":true}'
            statuses.append(response.status)
        return statuses
    finally:
        connection.close()


@needs_nginx
def test_nginx_accepts_the_rendered_config(tmp_path: Path) -> None:
    conf = anchors.write_nginx_config(anchors.free_port(), "127.0.0.1:9200", tmp_path)
    assert NGINX is not None
    checked = anchors.check_nginx(NGINX, conf, tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


@needs_haproxy
def test_haproxy_accepts_the_rendered_config(tmp_path: Path) -> None:
    conf = anchors.write_haproxy_config(anchors.free_port(), "127.0.0.1:9200", tmp_path)
    assert HAPROXY is not None
    checked = anchors.check_haproxy(HAPROXY, conf)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Configuration file is valid" in checked.stdout


@needs_nginx
def test_nginx_relays_the_raw_target_over_upstream_keep_alive(tmp_path: Path, upstream: str) -> None:
    assert NGINX is not None
    launched = anchors.start_nginx(NGINX, upstream, tmp_path)
    try:
        assert relay_twice(launched) == [200, 200]
        assert anchors.tree_cpu_seconds(launched.process.pid) >= 0
    finally:
        launched.stop()
    assert launched.process.returncode is not None
    # `Connection: ""` upstream: nginx sends no Connection header, so HTTP/1.1 keep-alive applies.
    assert _Upstream.seen == [(RAW_TARGET, ""), (RAW_TARGET, "")]


@needs_haproxy
def test_haproxy_relays_the_raw_target(tmp_path: Path, upstream: str) -> None:
    assert HAPROXY is not None
    launched = anchors.start_haproxy(HAPROXY, upstream, tmp_path)
    try:
        assert relay_twice(launched) == [200, 200]
    finally:
        launched.stop()
    assert [target for target, _ in _Upstream.seen] == [RAW_TARGET, RAW_TARGET]


def test_tree_cpu_counts_this_process() -> None:
    sum(i * i for i in range(200_000))  # some CPU to see
    assert anchors.tree_cpu_seconds(os.getpid()) > 0


HEY_REPORT = """
Summary:
  Total:	0.0036 secs
  Requests/sec:	1115.1038

Response time histogram:
  0.001 [1]	|■■■■

Latency distribution:
  10%% in 0.0006 secs
  50%% in 0.0027 secs

Status code distribution:
  [200]	5 responses
  [404]	2 responses

Error distribution:
  [1]	Get "http://127.0.0.1:9/": dial tcp 127.0.0.1:9: connect: connection refused
"""


def test_hey_report_is_parsed_with_its_own_counts() -> None:
    result = passthrough_cpu.parse_hey(HEY_REPORT)
    assert (result.ok, result.failed) == (5, 3)  # the 404s and the transport error both count as failed
    assert result.rps == pytest.approx(1115.1038) and result.p50_ms == pytest.approx(2.7)
