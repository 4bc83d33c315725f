"""Toxiproxy (the Go module github.com/Shopify/toxiproxy/v2) between the proxy and a real cluster, for faults on demand.

The server is built once from the Go module proxy into `<repo>/.cache/bin` (tests/gotool.py), started on a free
loopback port, and driven through its HTTP admin API with the stdlib.
`RERANK_TEST_TOXIPROXY` names a prebuilt `toxiproxy-server` to use instead.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from tests.gotool import go_binary

MODULE = "github.com/Shopify/toxiproxy/v2"
VERSION = "v2.5.0"  # the newest the Go module proxy serves (`go list -m -versions github.com/Shopify/toxiproxy/v2`)

Stream = Literal["upstream", "downstream"]  # toxiproxy's words: client->server, server->client


def binary() -> Path:
    """The toxiproxy-server executable, built on first use."""
    prebuilt = os.environ.get("RERANK_TEST_TOXIPROXY")
    if prebuilt:
        return Path(prebuilt)
    try:
        return go_binary(f"{MODULE}/cmd/server", VERSION, "toxiproxy-server")
    except RuntimeError as err:
        raise RuntimeError(f"{err}\n(or set RERANK_TEST_TOXIPROXY to a prebuilt toxiproxy-server)") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Toxiproxy:
    """A running toxiproxy-server and its admin API."""

    def __init__(self, api: str):
        self.api = api

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.api + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
                is_json = response.headers.get_content_type() == "application/json"
        except urllib.error.HTTPError as err:  # toxiproxy explains itself in the body: keep that in the failure
            raise RuntimeError(f"toxiproxy {method} {path}: {err.code} {err.read().decode(errors='replace')}") from None
        return json.loads(text) if is_json and text.strip() else text.decode()

    def create(self, name: str, upstream: str) -> Proxy:
        """A proxy listening on a free loopback port (toxiproxy picks it) and forwarding to `upstream` (host:port)."""
        made = self.call("POST", "/proxies", {"name": name, "listen": "127.0.0.1:0", "upstream": upstream,
                                               "enabled": True})
        return Proxy(self, name, made["listen"])


class Proxy:
    """One listen->upstream link; toxics added here apply to its open connections as well as new ones."""

    def __init__(self, server: Toxiproxy, name: str, listen: str):
        self.server = server
        self.name = name
        self.listen = listen

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def add_toxic(self, kind: str, stream: Stream = "downstream", toxicity: float = 1.0, **attributes: int) -> str:
        """Adds a toxic (reset_peer, timeout, limit_data, latency, slicer, bandwidth, ...); returns its name."""
        name = f"{kind}_{stream}"
        self.server.call("POST", f"/proxies/{self.name}/toxics", {
            "name": name, "type": kind, "stream": stream, "toxicity": toxicity, "attributes": attributes,
        })
        return name

    def remove_toxic(self, name: str) -> None:
        self.server.call("DELETE", f"/proxies/{self.name}/toxics/{name}")

    def clear(self) -> None:
        """Removes every toxic and re-enables the proxy: the state each test starts from."""
        for toxic in self.server.call("GET", f"/proxies/{self.name}/toxics") or []:
            self.remove_toxic(toxic["name"])
        self.set_enabled(True)

    def set_enabled(self, enabled: bool) -> None:
        """Disabled, nothing listens on the port (connections are refused) and open connections are dropped."""
        self.server.call("POST", f"/proxies/{self.name}", {"enabled": enabled})

    def delete(self) -> None:
        self.server.call("DELETE", f"/proxies/{self.name}")


def _wait_ready(server: Toxiproxy, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            server.call("GET", "/version")
            return
        except (OSError, RuntimeError):
            if process.poll() is not None:
                raise RuntimeError(f"toxiproxy-server exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"toxiproxy-server not answering on {server.api} after {timeout_s} s") from None
            time.sleep(0.05)


@contextmanager
def running_toxiproxy() -> Iterator[Toxiproxy]:
    """A toxiproxy-server on a free loopback port for the duration of the block."""
    port = free_port()
    process = subprocess.Popen([str(binary()), "-host", "127.0.0.1", "-port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Toxiproxy(f"http://127.0.0.1:{port}")
    try:
        _wait_ready(server, process)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
