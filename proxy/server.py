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
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from rerank.engine import ScoringEngine

from . import metrics, rerank_api
from .access_log import AccessLog, request_record
from .admin import ADMIN_PREFIX, AdminGuard, events_answer
from .capture import CaptureLog
from .config import Config, ConfigError, ListenerTLS, load_config
from .experiments import ExperimentBook
from .facts import SearchFacts
from .relay import Incoming, PassThrough, RelayServer
from .rerank_api import ROUTES as API_ROUTES
from .rerank_api import ApiGuard
from .resolve import IndexResolver
from .routing import ADMIN, EVENTS, PASSTHROUGH, Kind, Route, classify
from .search_endpoint import SearchEndpoint
from .shadow import ShadowScoring
from .tracing import Tracing
from .upstream import Upstream, UpstreamError
from .wire import Reply, RequestFacts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProxyState:
    """Everything a request needs, swapped as a whole on reload so a request sees one consistent config."""

    config: Config
    upstream: Upstream
    resolver: IndexResolver
    engine: ScoringEngine
    experiments: ExperimentBook  # carried over on reload: a reload does not reset an experiment
    shadows: ShadowScoring
    capture: CaptureLog | None
    access_log: AccessLog
    tracing: Tracing

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


async def build_state(config: Config, previous: ProxyState | None = None, wait_for_models: bool = True) -> ProxyState:
    """`wait_for_models=False`: the models load in the background (their searches fall back meanwhile); a reload
    always waits, so it never swaps a ready model for a loading one."""
    # First what can refuse the config (a log file that cannot be opened), before anything else has changed.
    if previous and previous.config.access_log == config.access_log:
        access_log = previous.access_log
    else:
        access_log = AccessLog(config.access_log)
    tracing = previous.tracing if previous and previous.config.tracing == config.tracing else Tracing(config.tracing)
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
        await engine.start(wait=wait_for_models)
    if previous and previous.config.events == config.events:
        experiments = previous.experiments
    else:
        if previous:
            log.warning("events changed: the served searches held for click events start afresh")
        experiments = ExperimentBook(config.events)
        if previous:  # the tallies so far stay
            experiments.tallies = previous.experiments.tallies
    metrics.EXPERIMENTS.read = experiments.summaries
    shadows = ShadowScoring(config.shadow_max_in_flight)
    if previous and previous.config.capture == config.capture:
        capture = previous.capture
    else:  # the old writer (if any) is closed by the reload once the new state is in place
        capture = CaptureLog(config.capture) if config.capture is not None else None
    return ProxyState(config, upstream, IndexResolver(config, lookup), engine, experiments, shadows, capture,
                      access_log, tracing)


_PASSTHROUGH = Kind.PASSTHROUGH.value


def _route(method: str, raw_path: bytes) -> Route:
    # Most traffic is not a search: a path that cannot name one skips routing (classify decodes, hence the `%`).
    if b"search" in raw_path or b"%" in raw_path:
        return _classified(method, raw_path)
    return PASSTHROUGH


@functools.lru_cache(maxsize=4096)
def _classified(method: str, raw_path: bytes) -> Route:
    """`classify` of a raw path, remembered: a search path comes back again and again (bounded: a client sending a
    new path each time only cycles the cache)."""
    return classify(method, raw_path.decode("latin-1"))  # classify decodes each segment itself


class ProxyServer:
    """The data port's application: claims searches (and the admin paths, when they share the data port) and
    answers them; the rest passes through."""

    def __init__(self, state: ProxyState, config_path: Path | None = None, overrides: Mapping[str, Any] | None = None):
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self.admin_guard = AdminGuard.of(state.config.admin)
        self._noted(state)
        self.api_guard = ApiGuard.of(state.config)
        self.draining = False
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        state.access_log.install()

    @property
    def upstream(self) -> Upstream:
        return self.state.upstream


    def _noted(self, state: ProxyState) -> None:
        """`state` in use from now on, and what the relay asks of every request read off it once."""
        self.state = state
        self.records_requests = state.access_log.enabled or state.tracing.enabled  # `finished` keeps something

    def claims(self, head: RequestFacts) -> Route | PassThrough | None:
        """The route of a request the proxy answers itself (a search, an admin path); None: pass it through; a
        PassThrough: a search skipped on its head alone."""
        raw = head.raw_path
        if b"search" not in raw and b"%" not in raw and not raw.startswith(b"/_rerank_proxy/"):
            metrics.REQUESTS.inc(_PASSTHROUGH)  # most traffic: a path that names no search, nor the proxy's own
            return None
        if raw == b"/_rerank_proxy/events" and self.state.config.events.listener == "data":
            return EVENTS
        # With an admin listener of their own, the proxy's paths are the cluster's like any other (it refuses them).
        if self.admin_guard.on_data_port and (
            raw.startswith(b"/_rerank_proxy/") or (b"%" in raw and head.path.startswith(ADMIN_PREFIX))
        ):
            return ADMIN
        route = _route(head.method, raw)
        kind = route.kind
        metrics.REQUESTS.inc(kind.value)
        if kind is Kind.PASSTHROUGH:
            return None
        return self.state.searches.decide_on_head(head, kind, route.index) or route

    async def handle(self, incoming: Incoming, route: Route) -> Reply | PassThrough:
        if route.kind is Kind.ADMIN:
            return await self.admin_guard.answer(incoming, self)
        if route.kind is Kind.EVENTS:
            return await events_answer(incoming, self.state)
        return await self.state.searches.handle(incoming, route.kind, route.index)

    def finished(self, incoming: Incoming | None, status: int, sent: int, error: str | None) -> None:
        """A data-port request was answered: its access-log line (when it is logged) and its spans (when traced)."""
        state = self.state
        access, tracing = state.access_log, state.tracing
        if not (access.enabled or tracing.enabled):
            return
        facts = None
        if incoming is not None:
            facts = incoming.note
            if facts is None and isinstance(incoming.decision, PassThrough):  # a search skipped on its head
                facts = incoming.decision.note
            if not isinstance(facts, SearchFacts):
                facts = None
        trace_id = tracing.finish(incoming, facts, status, sent, error) if tracing.enabled else None
        if access.enabled and access.wants(status, error, facts):
            access.write(request_record(incoming, status, sent, error, facts, trace_id))

    @staticmethod
    def record_upstream_error(err: UpstreamError) -> None:
        metrics.counter(metrics.UPSTREAM_ERRORS, err.kind).inc()

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.state.shadows.close()
        if self.state.capture is not None:
            await asyncio.to_thread(self.state.capture.close)
        await self.state.engine.close()
        await self.state.upstream.close()
        await asyncio.to_thread(self.state.access_log.close)
        await asyncio.to_thread(self.state.tracing.close)

    async def reload(self) -> None:
        """Atomic: the new config is fully validated and its models loaded before it replaces the old one."""
        if self.config_path is None:
            raise ConfigError("the proxy was started without a config file")
        async with self._reload_lock:
            old = self.state
            try:  # the file, and what the new state opens (a log file), can each refuse the reload
                config = load_config(self.config_path).with_overrides(**self.overrides)
                if config.listen != old.config.listen:
                    log.warning("listen changed to %s: takes effect on restart", config.listen)
                if config.admin.listen != old.config.admin.listen or config.tls != old.config.tls:
                    log.warning("admin.listen or tls changed: takes effect on restart")
                guard = AdminGuard.of(config.admin) if config.admin.listen == old.config.admin.listen else None
                api_guard = ApiGuard.of(config)
                self._noted(await build_state(config, old))
            except ConfigError:
                metrics.RELOADS.labels("rejected").inc()
                raise
            if old.access_log is not self.state.access_log:  # at once: no line goes to both, or to neither
                old.access_log.detach()
                self.state.access_log.install()
            if guard is not None:
                self.admin_guard = guard
            self.api_guard = api_guard
            metrics.RELOADS.labels("ok").inc()
            await old.engine.close_unused(self.state.engine)
            if old.capture is not None and old.capture is not self.state.capture:
                await asyncio.to_thread(old.capture.close)
            if old.access_log is not self.state.access_log:
                await asyncio.to_thread(old.access_log.close)
            if old.tracing is not self.state.tracing:  # spans of requests still in flight go with the old one
                self._later(60, asyncio.to_thread(old.tracing.close))
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


class AdminApplication:
    """The admin listener's application: every path on it is the proxy's own; nothing reaches the cluster."""

    def __init__(self, server: ProxyServer):
        self.server = server

    @property
    def upstream(self) -> Upstream:
        return self.server.upstream

    def claims(self, head: RequestFacts) -> Route:
        return ADMIN

    async def handle(self, incoming: Incoming, route: Route) -> Reply:
        server = self.server
        api = API_ROUTES.get(incoming.head.path)
        if api is not None and server.state.config.rerank_api.enabled:
            state = server.state
            return await rerank_api.answer(api, incoming, state.config, state.engine, server.api_guard)
        return await server.admin_guard.answer(incoming, server)


def tls_context(tls: ListenerTLS) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED if tls.client_auth == "required" else ssl.CERT_OPTIONAL
    return context


async def _listen(relay: RelayServer, address: str, tls: ListenerTLS | None) -> str:
    host, _, port = address.rpartition(":")
    try:
        context = tls_context(tls) if tls is not None else None
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"tls: cannot load the certificate or key: {err}") from None
    _, bound = await relay.listen(host.strip("[]"), int(port), context)
    return f"{'https' if tls else 'http'}://{host}:{bound}"


@dataclass
class Serving:
    """A started proxy: its application, listeners and URLs. `admin_url` is the data URL when the admin endpoints
    share the data port."""

    server: ProxyServer
    url: str
    admin_url: str
    relays: list[RelayServer]

    def stop_accepting(self) -> None:
        """No new connections from now on; idle ones close, busy ones after the answers they owe."""
        self.server.draining = True
        for relay in self.relays:
            relay.stop_accepting()

    async def drained(self, grace_s: float) -> int:
        """Waits up to `grace_s` for the requests in flight to finish; the connections still open then."""
        left = await asyncio.gather(*(relay.drained(grace_s) for relay in self.relays))
        return sum(left)

    async def cleanup(self) -> None:
        for relay in self.relays:
            await relay.close()
        await self.server.shutdown()


async def start_server(
    config: Config, config_path: Path | None = None, overrides: Mapping[str, Any] | None = None,
    *, wait_for_models: bool = True,
) -> Serving:
    """Starts serving on `config.listen` (port 0 picks a free one) and, unless the admin endpoints share it, on
    `config.admin.listen`. `wait_for_models=False` opens the ports at once, the models loading meanwhile."""
    AdminGuard.of(config.admin)  # a missing token stops the start before any model loads
    state = await build_state(config, wait_for_models=wait_for_models)
    server = ProxyServer(state, config_path, overrides)
    relay = RelayServer(server, server.record_upstream_error)
    relays = [relay]
    try:
        url = await _listen(relay, config.listen, config.tls)
        admin_url = url
        if config.admin.listen is not None:
            admin = RelayServer(AdminApplication(server))
            relays.append(admin)
            admin_url = await _listen(admin, config.admin.listen, config.admin.tls)
    except BaseException:
        for started in relays:
            await started.close()
        await server.shutdown()
        raise
    return Serving(server, url, admin_url, relays)
