"""Real nginx for the bypass tests: the renderer, an nginx process on a rendered config, and a raw HTTP client.

nginx is the Debian package (`apt-get install nginx-light`, /usr/sbin/nginx), or $RERANK_TEST_NGINX; the tests skip
when neither is there. Each instance runs in the foreground from a temporary prefix, never as the system service.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

RENDERER = Path(__file__).resolve().parents[1] / "docker" / "nginx" / "render.py"


def load_renderer() -> ModuleType:
    """docker/nginx/render.py as a module (docker/ is not a package)."""
    if "nginx_render" in sys.modules:
        return sys.modules["nginx_render"]
    spec = importlib.util.spec_from_file_location("nginx_render", RENDERER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["nginx_render"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def nginx_binary() -> str:
    """The nginx executable, or a skip that says how to get one."""
    found = os.environ.get("RERANK_TEST_NGINX") or shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if not found:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light; or set RERANK_TEST_NGINX)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_test(binary: str, conf: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on `conf`: the syntax and every directive's arguments checked, as at start."""
    return subprocess.run([binary, "-t", "-p", str(conf.parent), "-c", str(conf), "-g", "daemon off;"],
                          capture_output=True, text=True, timeout=30)


class Nginx:
    """nginx in the foreground on a config rendered into `workdir` (which holds its pid, logs and temp files)."""

    def __init__(self, workdir: Path, config: Any, **render_options: Any):
        self.binary = nginx_binary()
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = workdir / "nginx.conf"
        text = load_renderer().render(config, source="test", listen=f"127.0.0.1:{self.port}", workers="1",
                                      runtime_dir=workdir, **render_options)
        self.conf.write_text(text, encoding="utf-8")
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nginx:
        self._process = subprocess.Popen(
            [self.binary, "-p", str(self.workdir), "-c", str(self.conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self._process.stderr.read().decode()}{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen on {self.port}: {self.error_log()}")

    def __exit__(self, *exc: object) -> None:
        assert self._process
        self._process.terminate()  # SIGTERM: fast shutdown
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)

    def error_log(self) -> str:
        log = self.workdir / "error.log"
        return log.read_text(errors="replace") if log.exists() else ""


class RawResponse:
    def __init__(self, status_line: bytes, headers: list[tuple[bytes, bytes]], body: bytes):
        self.status = int(status_line.split()[1])
        self.headers = headers
        self.body = body

    def header(self, name: str) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name.lower().encode()), None)


class RawClient:
    """One keep-alive connection; request targets are sent as given, byte for byte (no URL parsing at all)."""

    def __init__(self, port: int):
        self.port = port
        self._sock: socket.socket | None = None
        self._buffer = b""

    def request(self, method: str, target: bytes, body: bytes = b"", headers: dict[str, str] | None = None,
                ) -> RawResponse:
        if self._sock is None:
            self._sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
            self._buffer = b""
        lines = [b"%s %s HTTP/1.1" % (method.encode(), target), b"Host: 127.0.0.1"]
        lines += [f"{k}: {v}".encode() for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT"):
            lines.append(b"Content-Length: %d" % len(body))
        self._sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        response = self._read(head_only=method == "HEAD")
        if (response.header("Connection") or b"").lower() == b"close":
            self.close()
        return response

    def _read(self, head_only: bool) -> RawResponse:
        head = self._until(b"\r\n\r\n")
        status_line, *header_lines = head.split(b"\r\n")
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(b":") for line in header_lines)]
        response = RawResponse(status_line, headers, b"")
        length = response.header("Content-Length")
        if head_only or response.status in (204, 304):
            return response
        if length is not None:
            response.body = self._exactly(int(length))
        elif (response.header("Transfer-Encoding") or b"").lower() == b"chunked":
            response.body = self._chunked()
        return response

    def _chunked(self) -> bytes:
        body = b""
        while size := int(self._until(b"\r\n").split(b";")[0], 16):
            body += self._exactly(size)
            self._exactly(2)
        self._until(b"\r\n")  # no trailers from these servers: the empty line after the last chunk
        return body

    def _fill(self) -> None:
        assert self._sock
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        self._buffer += chunk

    def _until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        data, _, self._buffer = self._buffer.partition(marker)
        return data

    def _exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def close(self) -> None:
        if self._sock:
            self._sock.close()
            self._sock = None
