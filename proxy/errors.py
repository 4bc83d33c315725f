"""Errors the proxy itself raises, in the shape Elasticsearch uses, so clients report them like the cluster's."""
from __future__ import annotations

import orjson

from .wire import Reply, json_reply


def es_error_body(status: int, error_type: str, reason: str) -> bytes:
    cause = {"type": error_type, "reason": reason}
    return orjson.dumps({"error": {"root_cause": [cause], **cause}, "status": status})


def es_error_reply(status: int, error_type: str, reason: str) -> Reply:
    return json_reply(status, es_error_body(status, error_type, reason))
