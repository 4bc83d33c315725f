"""The HTTP server: relays every request to the cluster and runs searches through the rerank pipeline.

A response is rebuilt only for a reranked search. Everything else, a skipped search included, is the cluster's
response relayed as it came: status, headers and the (still compressed) body bytes.
"""
from __future__ import annotations

import asyncio
import functools
import gzip
import logging
import signal
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from rerank.engine import ScoringEngine

from . import metrics
from .config import Config, ConfigError, load_config
from .errors import es_error
from .ndjson import NdjsonError, item_index, parse_msearch, serialize_msearch
from .resolve import IndexResolver
from .routing import PASSTHROUGH, Kind, classify
from .search import Outcome, Plan, RequestOptions, finish, plan_search, plan_template
from .upstream import Upstream, UpstreamUnavailable, forwardable
from .variants import UnknownVariant, choose_variant
from .view import apply_filter_path

log = logging.getLogger(__name__)

ADMIN_PREFIX = "/_rerank_proxy/"
SMALL_BODY = 1 << 20  # bodies up to this size are buffered; larger ones stream
_RERANK_HEADERS = ("X-Rerank", "X-Rerank-Variant", "X-Rerank-Query", "X-Rerank-Explain")
_NON_JSON = ("smile", "cbor", "yaml")


@functools.lru_cache(maxsize=1024)
def _counter(metric: Counter, *labels: str) -> Counter:
    """A labelled counter child, looked up once: `labels()` costs more than the increment it is for."""
    return metric.labels(*labels)


@dataclass(frozen=True)
class ProxyState:
    """Everything a request needs, swapped as a whole on reload so a request sees one consistent config."""

    config: Config
    upstream: Upstream
    resolver: IndexResolver
    engine: ScoringEngine


async def _lookup_aliases(upstream: Upstream, name: str) -> list[str]:
    found = await upstream.get_json(f"/{quote(name, safe=',*')}/_alias?expand_wildcards=open")
    return sorted(found) if isinstance(found, dict) else []


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


@dataclass
class ClusterReply:
    status: int
    reason: str | None
    headers: CIMultiDict[str]
    payload: bytes  # as sent, possibly compressed
    document: Any = field(default=None)  # the decoded JSON of a 200 answer

    @property
    def encoding(self) -> str:
        return self.headers.get("Content-Encoding", "")

    @property
    def opensearch(self) -> bool:
        """Elasticsearch (7.14+) marks every response; OpenSearch does not."""
        return "X-Elastic-Product" not in self.headers


class _RelayedResponse(web.StreamResponse):
    """A response that adds no `Date`/`Server` header the cluster did not send, so the proxy stays invisible."""

    # Hold the headers back until the first body bytes (or the end) and send both in one write, as `web.Response`
    # does: a small answer then costs one send() to the client instead of two.
    _send_headers_immediately = False

    def __init__(self, *, status: int, reason: str | None, headers: CIMultiDict[str]):
        super().__init__(status=status, reason=reason, headers=headers)
        self._no_date = "Date" not in headers
        self._no_server = "Server" not in headers

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        if self._no_date:
            self._headers.popall("Date", None)
        if self._no_server:
            self._headers.popall("Server", None)


def _decompress(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    if encoding in ("", "identity"):
        return data
    raise ValueError(f"unsupported content encoding {encoding}")


def _compress(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return gzip.compress(data, compresslevel=6, mtime=0)
    if encoding == "deflate":
        return zlib.compress(data)
    return data


def _request_options(headers: Mapping[str, str], variant: str) -> RequestOptions:
    force = headers.get("X-Rerank", "").strip().lower() or None
    return RequestOptions(
        force=force if force in ("on", "off") else None,
        variant=variant,
        query_override=headers.get("X-Rerank-Query") or None,
        explain=headers.get("X-Rerank-Explain", "").strip().lower() in ("1", "true", "on", "yes"),
    )


def _upstream_request_headers(request: web.BaseRequest) -> CIMultiDict[str]:
    headers = forwardable(request.headers)
    for name in _RERANK_HEADERS:
        headers.popall(name, None)
    return headers


class ProxyServer:
    def __init__(self, state: ProxyState, config_path: Path | None = None, overrides: Mapping[str, Any] | None = None):
        self.state = state
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self._reload_lock = asyncio.Lock()

    # ---- application ------------------------------------------------------------------------------------------

    def web_server(self) -> web.Server:
        """The low-level aiohttp server: every path goes to `handle`, so there is no router or app layer to pay for.

        auto_decompress=False: a compressed request body is relayed still compressed, byte for byte."""
        loop = asyncio.get_running_loop()

        def make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            # The low-level default would cap a request body at 1 MiB; `_msearch` and `_bulk` bodies run larger.
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=1 << 30)

        return web.Server(
            self.handle, request_factory=make_request, access_log=None, max_field_size=65536, auto_decompress=False
        )

    async def shutdown(self) -> None:
        await self.state.engine.close()
        await self.state.upstream.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith(ADMIN_PREFIX):
            return await self._admin(request)
        state = self.state
        # Most traffic is not a search: a path that cannot name one (classify unquotes, hence the `%`) skips routing.
        route = classify(request.method, path) if "search" in path or "%" in path else PASSTHROUGH
        _counter(metrics.REQUESTS, route.kind.value).inc()
        try:
            if route.kind is Kind.PASSTHROUGH:
                return await self._relay(request, state, None)
            return await self._search(request, state, route.kind, route.index)
        except UpstreamUnavailable as err:
            metrics.UPSTREAM_ERRORS.labels("unreachable").inc()
            return es_error(502, "rerank_proxy_upstream_unavailable_exception", f"no cluster node reachable: {err}")
        except (ConnectionError, asyncio.CancelledError):
            raise  # the client went away: nothing to answer
        except Exception as err:  # a bug of ours: say so in the cluster's error format rather than aiohttp's text
            log.exception("error handling %s %s", request.method, request.path)
            return es_error(500, "rerank_proxy_exception", f"{type(err).__name__}: {err}")

    # ---- pass-through -----------------------------------------------------------------------------------------

    async def _relay(
        self,
        request: web.BaseRequest,
        state: ProxyState,
        body: bytes | None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        """The client's request to the cluster and the cluster's response back, bytes untouched, streamed when large."""
        if body is None and request.body_exists:
            small = request.content_length is not None and request.content_length <= SMALL_BODY
            data: Any = await request.read() if small else request.content
        else:
            data = body
        upstream = await state.upstream.request(
            request.method, request.raw_path, _upstream_request_headers(request), data
        )
        async with upstream:
            headers = forwardable(upstream.headers)
            if extra_headers:
                headers.update(extra_headers)
            response = _RelayedResponse(status=upstream.status, reason=upstream.reason, headers=headers)
            length = upstream.content_length
            if length is not None and length <= SMALL_BODY:
                payload = await upstream.read()
                await response.prepare(request)
                await response.write_eof(payload)
                return response
            await response.prepare(request)
            content = upstream.content
            async for chunk in content.iter_any():
                if content.at_eof():
                    # The last bytes go out with the end of the body (and the headers, if still held) in one write:
                    # a chunked answer read in one piece, as most search responses are, costs one send(), not two.
                    await response.write_eof(chunk)
                    return response
                await response.write(chunk)
            await response.write_eof()
            return response

    # ---- searches ---------------------------------------------------------------------------------------------

    async def _search(
        self, request: web.BaseRequest, state: ProxyState, kind: Kind, index: str | None
    ) -> web.StreamResponse:
        started = time.perf_counter()
        raw = await request.read()
        try:
            choice = choose_variant(state.config, request.headers)
        except UnknownVariant as err:
            return es_error(400, "illegal_argument_exception", str(err))
        _counter(metrics.VARIANTS, choice.name, choice.how).inc()
        options = _request_options(request.headers, choice.name)
        params = list(request.query.items())
        try:
            text = _decompress(raw, request.headers.get("Content-Encoding", ""))
        except (OSError, ValueError, zlib.error):
            text = None
        accept = request.headers.get("Accept", "") + request.query.get("format", "")
        if text is None or any(fmt in accept for fmt in _NON_JSON):
            return await self._skip(request, state, raw, options, ["skipped; reason=non-json"])
        if kind in (Kind.MSEARCH, Kind.MSEARCH_TEMPLATE):
            return await self._msearch(request, state, raw, text, params, index, options, started, kind)
        try:
            body = orjson.loads(text) if text.strip() else None
        except orjson.JSONDecodeError:
            body = []  # not an object: the cluster answers with its own parse error
        if body is not None and not isinstance(body, dict):
            return await self._skip(request, state, raw, options, ["skipped; reason=bad-request"])
        planner = plan_template if kind is Kind.SEARCH_TEMPLATE else plan_search
        plan = await planner(state.config, state.resolver, index, body, params, options)
        if not plan.decision.rerank:
            return await self._skip(request, state, raw, options, [plan.skip_status])

        reply = await self._ask_cluster(request, state, orjson.dumps(plan.upstream_body), plan.upstream_params or [])
        if reply.document is None:
            return await self._send_as_is(request, reply, "skipped; reason=cluster-error")
        outcome = await finish(plan, reply.document, state.engine, options, opensearch=reply.opensearch)
        metrics.RERANK_SECONDS.observe(outcome.took_ms / 1000)
        return await self._reranked(request, reply, outcome.response, [outcome], options, started)

    async def _msearch(
        self,
        request: web.BaseRequest,
        state: ProxyState,
        raw: bytes,
        text: bytes,
        params: list[tuple[str, str]],
        index: str | None,
        options: RequestOptions,
        started: float,
        kind: Kind,
    ) -> web.StreamResponse:
        try:
            items = parse_msearch(text)
        except NdjsonError:
            return await self._skip(request, state, raw, options, ["skipped; reason=bad-request"])
        planner = plan_template if kind is Kind.MSEARCH_TEMPLATE else plan_search
        plans: list[Plan] = await asyncio.gather(
            *(planner(state.config, state.resolver, item_index(item, index), item.body, [], options) for item in items)
        )
        if not any(p.decision.rerank for p in plans):
            return await self._skip(request, state, raw, options, [p.skip_status for p in plans])
        lines = []
        for item, plan in zip(items, plans):
            lines += [item.raw_header, orjson.dumps(plan.upstream_body) if plan.decision.rerank else item.raw_body]
        kept = [(k, v) for k, v in params if k != "filter_path"]
        reply = await self._ask_cluster(request, state, serialize_msearch(lines), kept)
        decoded = reply.document
        responses = decoded.get("responses") if isinstance(decoded, dict) else None
        if not isinstance(responses, list) or len(responses) != len(plans):
            return await self._send_as_is(request, reply, "skipped; reason=cluster-error")

        async def one(plan: Plan, item_response: Any) -> Outcome:
            if not plan.decision.rerank:
                return Outcome(item_response, plan.skip_status, 0.0)
            return await finish(plan, item_response, state.engine, options, opensearch=reply.opensearch)

        outcomes = await asyncio.gather(*(one(p, r) for p, r in zip(plans, responses)))
        decoded["responses"] = [o.response for o in outcomes]
        filter_path = request.query.get("filter_path")
        if filter_path:
            decoded = apply_filter_path(decoded, filter_path, opensearch=reply.opensearch)
        return await self._reranked(request, reply, decoded, outcomes, options, started)

    async def _skip(
        self, request: web.BaseRequest, state: ProxyState, raw: bytes, options: RequestOptions, statuses: list[str]
    ) -> web.StreamResponse:
        for status in statuses:
            metrics.record_search(status, options.variant)
        headers = {"X-Rerank-Status": ", ".join(statuses), "X-Rerank-Variant": options.variant}
        return await self._relay(request, state, raw, headers)

    async def _ask_cluster(
        self, request: web.BaseRequest, state: ProxyState, body: bytes, params: list[tuple[str, str]]
    ) -> ClusterReply:
        """The rewritten search to the cluster, its response read whole (it is rewritten, not streamed)."""
        headers = _upstream_request_headers(request)
        for name in ("Content-Length", "Content-Encoding"):
            headers.popall(name, None)
        headers.setdefault("Content-Type", "application/json")
        path_qs = request.path + ("?" + urlencode(params, quote_via=quote, safe=",*") if params else "")
        upstream = await state.upstream.request(request.method, path_qs, headers, body)
        async with upstream:
            payload = await upstream.read()
            reply = ClusterReply(upstream.status, upstream.reason, forwardable(upstream.headers), payload)
        if reply.status == 200:
            try:
                reply.document = orjson.loads(_decompress(payload, reply.encoding))
            except (ValueError, OSError, zlib.error):
                pass
        return reply

    @staticmethod
    async def _send_as_is(
        request: web.BaseRequest, reply: ClusterReply, status: str | None = None
    ) -> web.StreamResponse:
        headers = reply.headers
        if status:
            headers = CIMultiDict(headers)
            headers["X-Rerank-Status"] = status
        response = _RelayedResponse(status=reply.status, reason=reply.reason, headers=headers)
        await response.prepare(request)
        await response.write_eof(reply.payload)
        return response

    async def _reranked(
        self,
        request: web.BaseRequest,
        reply: ClusterReply,
        document: Any,
        outcomes: list[Outcome],
        options: RequestOptions,
        started: float,
    ) -> web.StreamResponse:
        for outcome in outcomes:
            metrics.record_search(outcome.status, options.variant)
        pretty = "pretty" in request.query and request.query.get("pretty") != "false"
        payload = _compress(orjson.dumps(document, option=orjson.OPT_INDENT_2 if pretty else 0), reply.encoding)
        headers = CIMultiDict(reply.headers)
        headers.popall("Content-Length", None)
        headers["X-Rerank-Status"] = ", ".join(o.status for o in outcomes)
        headers["X-Rerank-Variant"] = options.variant
        headers["X-Rerank-Took-Ms"] = f"{(time.perf_counter() - started) * 1000:.1f}"
        headers["Content-Length"] = str(len(payload))
        reply = ClusterReply(reply.status, reply.reason, headers, payload)
        return await self._send_as_is(request, reply)

    # ---- admin ------------------------------------------------------------------------------------------------

    async def _admin(self, request: web.BaseRequest) -> web.StreamResponse:
        action = request.path[len(ADMIN_PREFIX) :].strip("/")
        if action == "health" and request.method in ("GET", "HEAD"):
            models = self.state.engine.states()
            healthy = all(s == "ready" for s in models.values())
            return web.json_response(
                {"status": "green" if healthy else "degraded", "models": models, "upstreams": self.state.upstream.urls},
                dumps=lambda o: orjson.dumps(o).decode(),
            )
        if action == "metrics" and request.method == "GET":
            return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
        if action == "reload" and request.method == "POST":
            try:
                await self.reload()
            except ConfigError as err:
                return es_error(400, "rerank_proxy_config_exception", f"config not reloaded, the old one stays: {err}")
            return web.json_response({"acknowledged": True, "models": self.state.engine.states()})
        return es_error(404, "rerank_proxy_admin_exception", f"no admin endpoint [{request.method} {request.path}]")

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
                asyncio.get_running_loop().call_later(60, lambda: asyncio.ensure_future(old.upstream.close()))
            log.info("config reloaded from %s", self.config_path)

    def install_sighup(self) -> None:
        def on_hup() -> None:
            async def run() -> None:
                try:
                    await self.reload()
                except ConfigError as err:
                    log.error("SIGHUP reload rejected, keeping the old config:\n%s", err)

            asyncio.ensure_future(run())

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)


class _Runner(web.ServerRunner):
    """Closes the proxy's engine and upstream pool when it stops (what an app's on_shutdown hook would do)."""

    def __init__(self, server: ProxyServer):
        super().__init__(server.web_server(), handle_signals=False)
        self._proxy = server

    async def shutdown(self) -> None:
        await self._proxy.shutdown()


async def start_server(
    config: Config, config_path: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> tuple[ProxyServer, web.BaseRunner, str]:
    """Starts serving on `config.listen` (port 0 picks a free one) and returns the server, its runner and its URL."""
    state = await build_state(config)
    server = ProxyServer(state, config_path, overrides)
    runner = _Runner(server)
    await runner.setup()
    host, _, port = config.listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port), backlog=1024, reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
    return server, runner, f"http://{host}:{bound[1]}"
