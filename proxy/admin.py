"""The proxy's own endpoints under `/_rerank_proxy/`: health, metrics, config reload."""
from __future__ import annotations

from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .config import ConfigError
from .errors import es_error_reply
from .wire import Reply, RequestHead, header_line, json_reply

ADMIN_PREFIX = "/_rerank_proxy/"


async def admin_reply(head: RequestHead, server: Any) -> Reply:
    """`server`: the ProxyServer, whose `state` is read at the time and whose `reload()` may replace it."""
    state = server.state
    action = head.path[len(ADMIN_PREFIX):].strip("/")
    method = head.method
    if action == "health" and method in ("GET", "HEAD"):
        models = state.engine.states()
        healthy = all(s == "ready" for s in models.values())
        body = {"status": "green" if healthy else "degraded", "models": models, "upstreams": state.upstream.urls}
        return json_reply(200, orjson.dumps(body))
    if action == "metrics" and method == "GET":
        return Reply(200, b"OK", [header_line(b"Content-Type", CONTENT_TYPE_LATEST.encode())], generate_latest())
    if action == "reload" and method == "POST":
        try:
            await server.reload()
        except ConfigError as err:
            return es_error_reply(400, "rerank_proxy_config_exception", f"config not reloaded, the old one stays: {err}")
        return json_reply(200, orjson.dumps({"acknowledged": True, "models": server.state.engine.states()}))
    return es_error_reply(404, "rerank_proxy_admin_exception", f"no admin endpoint [{method} {head.path}]")
