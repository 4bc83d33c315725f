"""Which requests are searches. Everything else is streamed through untouched."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import unquote


class Kind(enum.Enum):
    SEARCH = "search"
    MSEARCH = "msearch"
    SEARCH_TEMPLATE = "search_template"
    MSEARCH_TEMPLATE = "msearch_template"
    ADMIN = "admin"  # the proxy's own endpoints, under /_rerank_proxy/
    EVENTS = "events"  # click events on the data port (`events.listener: data`), no admin token needed
    PASSTHROUGH = "passthrough"


# endpoint suffix -> kind; the index segment, when present, comes before it.
_ENDPOINTS = {
    ("_search",): Kind.SEARCH,
    ("_msearch",): Kind.MSEARCH,
    ("_search", "template"): Kind.SEARCH_TEMPLATE,
    ("_msearch", "template"): Kind.MSEARCH_TEMPLATE,
}


@dataclass(frozen=True)
class Route:
    kind: Kind
    index: str | None = None  # the index expression of the path, decoded (`a,b`, `logs-*`), None for all


PASSTHROUGH = Route(Kind.PASSTHROUGH)
ADMIN = Route(Kind.ADMIN)
EVENTS = Route(Kind.EVENTS)


def classify(method: str, path: str) -> Route:
    if method not in ("GET", "POST"):
        return PASSTHROUGH
    segments = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
    for n in (2, 1):
        if len(segments) < n or tuple(segments[-n:]) not in _ENDPOINTS:
            continue
        rest = segments[:-n]
        if len(rest) > 1 or (rest and not rest[0]):
            return PASSTHROUGH
        return Route(_ENDPOINTS[tuple(segments[-n:])], rest[0] if rest else None)
    return PASSTHROUGH
