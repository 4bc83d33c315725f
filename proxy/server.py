"""The proxy: its state (config, upstream pool, index resolver, scoring engine), swapped whole on reload, and the
application the relay serves: searches and the admin paths are claimed, everything else streams through.

A response is rebuilt only for a reranked search. Everything else, a skipped search included, is the cluster's
response relayed as it came: status, headers and the (still compressed) body bytes.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from rerank.engine import ScoringEngine

from . import metrics
from .admin import ADMIN_PREFIX, admin_reply
from .config import Config, ConfigError, load_config
from .relay import Incoming, PassThrough, RelayServer
from .resolve import IndexResolver
from .routing import ADMIN, PASSTHROUGH, Kind, Route, classify
from .search_endpoint import SearchEndpoint
from .upstream import Upstream, UpstreamError
from .wire import Reply, RequestHead

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProxyState:
    """Everything a request needs, swapped as a whole on reload so a request sees one consistent config."""

    config: Config
    upstream: Upstream
    resolver: IndexResolver
    engine: ScoringEngine

    @functools.cached_property
    def searches(self) -> SearchEndpoint:
        return SearchEndpoint(self)


async def _lookup_aliases(upstream: Upstream, name: str) -> list[str]:
    found = await upstream.get_json_bytes(f"/{quote(name, safe=',*')}/_alias?expand_wildcards=open".encode())
    try:
        decoded = orjson.loads(found) if found is not None else None
    except orjson.JSONDecodeError:
        return []
    return sorted(decoded) if isinstance(decoded, dict) else []


async def build_state(config: Config, previous: ProxyState | None = None) -> ProxyState:
    if previous and previous.config.upstreams == config.upstreams and previous.config.upstream == config.upstream:
        upstream = previous.upstream
    else:
        upstream = Upstream(config)

    async def lookup(name: str) -> list[str]:
        return await _lookup_aliases(upstream, name)

    if previous:
        engine = await previous.engine.reconfigured(config.models)
    else:
        engine = ScoringEngine(config.models)
        await engine.start()
    return ProxyState(config, upstream, IndexResolver(config, lookup), engine)


def _route(head: RequestHead) -> Route:
    # Most traffic is not a search: a path that cannot name one skips routing (classify decodes, hence the `%`).
    raw = head.raw_path
    if b"search" in raw or b"%" in raw:
        return classify(head.method, head.raw_path.decode("latin-1"))  # classify decodes each segment itself
    return PASSTHROUGH


class ProxyServer:
    """The relay's application: claims searches and admin paths, answers them; the rest passes through."""

    def __init__(self, state: ProxyState, config_path: Path | None = None, overrides: Mapping[str, Any] | None = None):
        self.state = state
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def upstream(self) -> Upstream:
        return self.state.upstream

    def claims(self, head: RequestHead) -> Route | None:
        """The route of a request the proxy answers itself (a search, an admin path); None: pass it through."""
        raw = head.raw_path
        if raw.startswith(b"/_rerank_proxy/") or (b"%" in raw and head.path.startswith(ADMIN_PREFIX)):
            return ADMIN
        route = _route(head)
        metrics.counter(metrics.REQUESTS, route.kind.value).inc()
        return None if route.kind is Kind.PASSTHROUGH else route

    async def handle(self, incoming: Incoming, route: Route) -> Reply | PassThrough:
        if route.kind is Kind.ADMIN:
            return await admin_reply(incoming.head, self)
        return await self.state.searches.handle(incoming, route.kind, route.index)

    @staticmethod
    def record_upstream_error(err: UpstreamError) -> None:
        metrics.counter(metrics.UPSTREAM_ERRORS, type(err).__name__.removeprefix("Upstream").lower() or "broken").inc()

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.state.engine.close()
        await self.state.upstream.close()

    async def reload(self) -> None:
        """Atomic: the new config is fully validated and its models loaded before it replaces the old one."""
        if self.config_path is None:
            raise ConfigError("the proxy was started without a config file")
        async with self._reload_lock:
            try:
                config = load_config(self.config_path).with_overrides(**self.overrides)
            except ConfigError:
                metrics.RELOADS.labels("rejected").inc()
                raise
            if config.listen != self.state.config.listen:
                log.warning("listen changed to %s: takes effect on restart", config.listen)
            old = self.state
            self.state = await build_state(config, old)
            metrics.RELOADS.labels("ok").inc()
            await old.engine.close_unused(self.state.engine)
            if old.upstream is not self.state.upstream:
                # Requests in flight keep the old pool for a while; then its idle connections are closed.
                self._later(60, old.upstream.close())
            log.info("config reloaded from %s", self.config_path)

    def _later(self, delay_s: float, work: Any) -> None:
        async def run() -> None:
            await asyncio.sleep(delay_s)
            await work

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def install_sighup(self) -> None:
        def on_hup() -> None:
            async def run() -> None:
                try:
                    await self.reload()
                except ConfigError as err:
                    log.error("SIGHUP reload rejected, keeping the old config:\n%s", err)

            task = asyncio.get_running_loop().create_task(run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)


class Runner:
    """What `start_server` returns beside the server: `cleanup()` stops listening and closes engine and pool."""

    def __init__(self, server: ProxyServer, relay: RelayServer):
        self.server = server
        self.relay = relay

    async def cleanup(self) -> None:
        await self.relay.close()
        await self.server.shutdown()


async def start_server(
    config: Config, config_path: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> tuple[ProxyServer, Runner, str]:
    """Starts serving on `config.listen` (port 0 picks a free one) and returns the server, its runner and its URL."""
    state = await build_state(config)
    server = ProxyServer(state, config_path, overrides)
    relay = RelayServer(server, server.record_upstream_error)
    host, _, port = config.listen.rpartition(":")
    _, bound = await relay.listen(host.strip("[]"), int(port))
    return server, Runner(server, relay), f"http://{host}:{bound}"
