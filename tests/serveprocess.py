"""`rerank-proxy serve` as a process, for tests of what only a process shows: signals, start-up, exit codes."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import raw

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "proxy.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """`rerank-proxy serve` in a subprocess; ready when its readiness endpoint says every model has loaded."""

    def __init__(self, config_path: Path, upstream: str, wait_ready: bool = True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{free_port()}"
        self.wait_ready = wait_ready
        self.args = [*CLI, "serve", "--config", str(config_path), "--listen", f"127.0.0.1:{self.port}",
                     "--upstream", upstream, "--admin-listen", self.admin_url.removeprefix("http://")]

    def __enter__(self) -> Serve:
        self.process = subprocess.Popen(self.args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self._changed = threading.Condition()

        def read() -> None:
            for line in self.process.stdout:  # type: ignore[union-attr]
                with self._changed:
                    self.lines.append(line.decode(errors="replace"))
                    self._changed.notify_all()
            with self._changed:
                self.lines.append("<process exited>")
                self._changed.notify_all()

        threading.Thread(target=read, daemon=True).start()
        self.wait_for_log("serving on", 120)
        if self.wait_ready:
            self.wait_for(lambda: raw("GET", f"{self.admin_url}/_rerank_proxy/ready").status == 200, 120)
        return self

    def wait_for(self, condition: Callable[[], bool], timeout: float) -> None:
        """Polls `condition` (a cheap HTTP call) until it holds; fails with the server's log after `timeout`."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None and time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.05)

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        with self._changed:
            found = self._changed.wait_for(
                lambda: any(text in line or line == "<process exited>" for line in self.lines), timeout
            )
            assert found and any(text in line for line in self.lines), "".join(self.lines)

    def peak_rss_kb(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
