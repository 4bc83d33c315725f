"""Errors the proxy itself raises, in the shape Elasticsearch uses, so clients report them like the cluster's."""
from __future__ import annotations

import orjson
from aiohttp import web


def es_error_body(status: int, error_type: str, reason: str) -> bytes:
    cause = {"type": error_type, "reason": reason}
    return orjson.dumps({"error": {"root_cause": [cause], **cause}, "status": status})


def es_error(status: int, error_type: str, reason: str) -> web.Response:
    return web.Response(
        status=status, body=es_error_body(status, error_type, reason), content_type="application/json"
    )
