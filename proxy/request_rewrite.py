"""The upstream search: the whole rerank window from rank 0, with the `_source` the reranker reads.

The client's own view (its page, `_source` filtering and `filter_path`) is taken off the upstream request and kept
in a ClientView, to be re-applied to the response after reranking.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .decide import Page, requested_page
from .view import SourceFilter, source_filter_from_request

# URL parameters the proxy takes over; everything else goes to the cluster unchanged.
_VIEW_PARAMS = frozenset({"filter_path", "_source", "_source_includes", "_source_excludes", "from", "size"})


@dataclass(frozen=True)
class ClientView:
    page: Page
    source: SourceFilter
    source_widened: bool  # the upstream `_source` differs from the client's: re-filter every hit
    filter_path: str | None


@dataclass(frozen=True)
class UpstreamSearch:
    body: dict[str, Any]
    params: list[tuple[str, str]]


def _upstream_source(client: SourceFilter, needed: Sequence[str] | None) -> Any:
    """The narrowest `_source` that serves both the client and the text builder (None: the cluster's default)."""
    if client.is_identity:
        return None
    if needed is None or (client.enabled and not client.includes):
        return True
    return {"includes": sorted({*(client.includes if client.enabled else ()), *needed})}


def rewrite_search(
    body: Mapping[str, Any] | None,
    params: Sequence[tuple[str, str]],
    window: int,
    needed_fields: Sequence[str] | None,
) -> tuple[UpstreamSearch, ClientView]:
    """Raises ValueError for `_source` options the cluster itself rejects (the caller lets the cluster answer)."""
    body = dict(body or {})
    flat_params = dict(params)
    page = requested_page(body, flat_params)
    assert page is not None, "decide() rejects searches without a valid page"
    stored_fields = "stored_fields" in body or "stored_fields" in flat_params or "script_fields" in body
    client_source = source_filter_from_request(
        body.get("_source"), flat_params, stored_fields, fields_given=bool(body.get("fields"))
    )

    upstream = {k: v for k, v in body.items() if k not in ("from", "size", "_source")}
    upstream["from"] = 0
    upstream["size"] = max(window, page.from_ + page.size)
    source = _upstream_source(client_source, needed_fields)
    if source is not None:
        upstream["_source"] = source
    view = ClientView(
        page=page,
        source=client_source,
        source_widened=source is not None,
        filter_path=flat_params.get("filter_path"),
    )
    kept = [(k, v) for k, v in params if k not in _VIEW_PARAMS]
    return UpstreamSearch(upstream, kept), view
