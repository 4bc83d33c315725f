"""The proxy's own endpoints under `/_rerank_proxy/`: liveness, readiness, health, metrics, config reload, the
experiments' verdicts and their click events.

They answer on the admin listener (loopback by default), or on the data port behind a bearer token; never to a
data-port client that has no token.
"""
from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .config import AdminOptions, ConfigError
from .console import console_reply
from .errors import es_error_reply
from .events import events_reply
from .relay import Incoming
from .wire import HeaderView, Reply, RequestHead, header_line, json_reply

ADMIN_PREFIX = "/_rerank_proxy/"
_CHALLENGE = header_line(b"WWW-Authenticate", b'Bearer realm="rerank-proxy"')


@dataclass(frozen=True)
class AdminGuard:
    """Who may call the admin endpoints: anyone who reaches their own listener, or holders of the token."""

    on_data_port: bool
    token: bytes | None  # never logged or shown: `repr` leaves it out
    token_env: str | None

    def __repr__(self) -> str:
        return f"AdminGuard(on_data_port={self.on_data_port}, token_env={self.token_env!r})"

    @classmethod
    def of(cls, options: AdminOptions) -> AdminGuard:
        token = None
        if options.token_env is not None:
            value = os.environ.get(options.token_env, "").strip()
            if not value:
                raise ConfigError(f"admin.token_env: the environment variable {options.token_env} is not set")
            token = value.encode()
        return cls(options.listen is None, token, options.token_env)

    def allows(self, head: RequestHead) -> bool:
        if self.token is None:
            return True
        scheme, _, given = HeaderView(head.pairs).get("Authorization", "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("latin-1"), self.token)

    async def answer(self, incoming: Incoming, server: Any) -> Reply:
        if not self.allows(incoming.head):
            reply = es_error_reply(401, "security_exception", "the admin endpoints need a valid bearer token")
            reply.lines.append(_CHALLENGE)
            return reply
        return await admin_reply(incoming, server)


async def events_answer(incoming: Incoming, state: Any) -> Reply:
    """`POST .../events`, on the admin listener or (`events.listener: data`) the data port."""
    options = state.config.events
    if incoming.head.method != "POST":
        return es_error_reply(405, "rerank_proxy_events_exception",
                              f"[{incoming.head.method}] is not allowed on the events endpoint; use POST")
    body = await incoming.body.read(options.max_body_bytes)
    return events_reply(body, state.experiments, options, state.capture)


async def admin_reply(incoming: Incoming, server: Any) -> Reply:
    """`server`: the ProxyServer, whose `state` is read at the time and whose `reload()` may replace it."""
    head = incoming.head
    state = server.state
    action = head.path[len(ADMIN_PREFIX):].strip("/")
    method = head.method
    if method in ("GET", "HEAD"):
        if action == "live":  # the event loop answers: restart only when this does not
            return json_reply(200, b'{"status":"alive"}')
        if action == "ready":  # send traffic here: every model loaded, not shutting down
            ready = state.engine.loaded and not server.draining
            body = {"ready": ready, "draining": server.draining, "models": state.engine.states()}
            return json_reply(200 if ready else 503, orjson.dumps(body))
        if action == "health":
            models = state.engine.states()
            healthy = state.engine.ready and not server.draining
            body = {"status": "green" if healthy else "degraded", "draining": server.draining, "models": models,
                    "upstreams": state.upstream.urls}
            return json_reply(200, orjson.dumps(body))
    if action == "experiments" and method == "GET":
        return json_reply(200, orjson.dumps(state.experiments.summary(state.config)))
    if action == "events":
        return await events_answer(incoming, state)
    if action == "metrics" and method == "GET":
        return Reply(200, b"OK", [header_line(b"Content-Type", CONTENT_TYPE_LATEST.encode())], generate_latest())
    if action == "reload" and method == "POST":
        try:
            await server.reload()
        except ConfigError as err:
            return es_error_reply(
                400, "rerank_proxy_config_exception", f"config not reloaded, the old one stays: {err}"
            )
        return json_reply(200, orjson.dumps({"acknowledged": True, "models": server.state.engine.states()}))
    if action == "ui" or action.startswith("ui/"):  # the console: its page and the page's API (proxy/console.py)
        return await console_reply(incoming, state, action[len("ui"):].strip("/"))
    return es_error_reply(404, "rerank_proxy_admin_exception", f"no admin endpoint [{method} {head.path}]")
