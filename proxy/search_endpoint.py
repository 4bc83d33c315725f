"""The HTTP side of a search: from the client's request to the rerank pipeline (`search.py`) and back.

A search is read whole, planned, and either passed through as the client sent it (skipped: the relay then streams
the cluster's answer untouched) or sent to the cluster rewritten, its answer reranked and re-serialised. The
rewritten request keeps the client's raw path, every query parameter the proxy does not take over byte for byte,
and the client's media types.
"""
from __future__ import annotations

import asyncio
import gzip
import re
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from . import metrics
from .errors import es_error_reply
from .ndjson import NdjsonError, item_index, parse_msearch, serialize_msearch, strict_loads
from .relay import Incoming, PassThrough
from .routing import Kind
from .search import Outcome, Plan, RequestOptions, finish, plan_search, plan_template
from .upstream import Collected
from .variants import CONTROL, UnknownVariant, choose_variant
from .view import apply_filter_path
from .wire import HeaderView, Reply, RequestHead, filtered_target, header_line

# The clusters refuse bodies over 100 MB (`http.max_content_length`); a larger search is theirs to refuse.
MAX_SEARCH_BODY = 100 * 1024 * 1024
_NON_JSON = ("smile", "cbor", "yaml")
_COMPATIBLE = re.compile(r"compatible-with\s*=\s*(\d+)")
_DROPPED_ON_REWRITE = (b"content-encoding",)  # a rewritten body is sent as plain JSON


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


def _status_lines(statuses: list[str], variant: str) -> list[bytes]:
    return [
        header_line(b"X-Rerank-Status", ", ".join(statuses).encode()),
        header_line(b"X-Rerank-Variant", variant.encode()),
    ]


def request_options(headers: Mapping[str, str], variant: str) -> RequestOptions:
    force = headers.get("X-Rerank", "").strip().lower() or None
    return RequestOptions(
        force=force if force in ("on", "off") else None,
        variant=variant,
        query_override=headers.get("X-Rerank-Query") or None,
        explain=headers.get("X-Rerank-Explain", "").strip().lower() in ("1", "true", "on", "yes"),
    )


def rewritten_content_type(headers: Mapping[str, str], ndjson: bool) -> bytes | None:
    """The `Content-Type` a body the proxy wrote needs when the client sent none: the client's own REST API
    version (`compatible-with=8` in its `Accept`), since the cluster refuses a mismatch. None: keep the client's."""
    if "Content-Type" in headers:
        return None
    found = _COMPATIBLE.search(headers.get("Accept", ""))
    kind = "x-ndjson" if ndjson else "json"
    if found:
        return f"application/vnd.elasticsearch+{kind}; compatible-with={found.group(1)}".encode()
    return f"application/{kind}".encode()


@dataclass
class _Search:
    """One client search while it is served: what was asked and how it is to be answered."""

    head: RequestHead
    headers: HeaderView
    raw: bytes
    params: list[tuple[str, str]]
    options: RequestOptions
    started: float


class SearchEndpoint:
    """`_search`, `_msearch` and their template variants, for one state of the proxy (config, upstream, engine)."""

    def __init__(self, state: Any):
        self.state = state

    async def handle(self, incoming: Incoming, kind: Kind, index: str | None) -> Reply | PassThrough:
        started = time.perf_counter()
        declared = incoming.head.content_length
        too_large = declared is not None and declared.isdigit() and int(declared) > MAX_SEARCH_BODY
        raw = None if too_large else await incoming.body.read(MAX_SEARCH_BODY)
        if raw is None:  # the cluster's to refuse; no variant is chosen for a search that is not read
            status = "skipped; reason=body-too-large"
            metrics.record_search(status, CONTROL)
            return PassThrough(None, _status_lines([status], CONTROL))
        head = incoming.head
        headers = head.header_view()
        try:
            choice = choose_variant(self.state.config, headers)
        except UnknownVariant as err:
            return es_error_reply(400, "illegal_argument_exception", str(err))
        metrics.counter(metrics.VARIANTS, choice.name, choice.how).inc()
        search = _Search(head, headers, raw, head.query(), request_options(headers, choice.name), started)
        try:
            text: bytes | None = _decompress(raw, headers.get("Content-Encoding", ""))
        except (OSError, ValueError, zlib.error, EOFError):
            text = None
        accept = headers.get("Accept", "") + dict(search.params).get("format", "")
        if text is None or any(fmt in accept for fmt in _NON_JSON):
            return self._skip(search, ["skipped; reason=non-json"])
        if kind in (Kind.MSEARCH, Kind.MSEARCH_TEMPLATE):
            return await self._msearch(search, text, index, kind)
        if search.options.force == "off":  # what planning would say, without parsing the body first
            return self._skip(search, ["skipped; reason=header-off"])
        if not _utf8(search.params):  # the cluster refuses these; a rewritten request could not even carry them
            return self._skip(search, ["skipped; reason=bad-request"])
        try:
            # Strict: duplicate keys, which the cluster refuses, must not be collapsed into a body it accepts.
            body = strict_loads(text) if text.strip() else None
        except NdjsonError:
            body = []  # not an object: the cluster answers with its own parse error
        if body is not None and not isinstance(body, dict):
            return self._skip(search, ["skipped; reason=bad-request"])
        planner = plan_template if kind is Kind.SEARCH_TEMPLATE else plan_search
        plan = await planner(self.state.config, self.state.resolver, index, body, search.params, search.options)
        if not plan.decision.rerank:
            return self._skip(search, [plan.skip_status])
        reply = await self._ask_cluster(search, orjson.dumps(plan.upstream_body), plan.upstream_params or [], False)
        document = _document(reply)
        if document is None:
            return _as_sent(reply, ["skipped; reason=cluster-error"], search.options.variant)
        outcome = await finish(plan, document, self.state.engine, search.options, opensearch=_opensearch(reply))
        metrics.RERANK_SECONDS.observe(outcome.took_ms / 1000)
        return self._reranked(search, reply, outcome.response, [outcome])

    async def _msearch(self, search: _Search, text: bytes, index: str | None, kind: Kind) -> Reply | PassThrough:
        try:
            items = parse_msearch(text) if _utf8(search.params) else []
        except NdjsonError:
            items = []
        if not items:
            return self._skip(search, ["skipped; reason=bad-request"])
        planner = plan_template if kind is Kind.MSEARCH_TEMPLATE else plan_search
        config, resolver, options = self.state.config, self.state.resolver, search.options
        plans: list[Plan] = await asyncio.gather(
            *(planner(config, resolver, item_index(item, index), item.body, [], options) for item in items)
        )
        if not any(p.decision.rerank for p in plans):
            return self._skip(search, [p.skip_status for p in plans])
        lines = []
        for item, plan in zip(items, plans):
            lines += [item.raw_header, orjson.dumps(plan.upstream_body) if plan.decision.rerank else item.raw_body]
        kept = [(k, v) for k, v in search.params if k != "filter_path"]
        reply = await self._ask_cluster(search, serialize_msearch(lines), kept, True)
        decoded = _document(reply)
        responses = decoded.get("responses") if isinstance(decoded, dict) else None
        if not isinstance(responses, list) or len(responses) != len(plans):
            return _as_sent(reply, ["skipped; reason=cluster-error"], options.variant)
        opensearch = _opensearch(reply)

        async def one(plan: Plan, item_response: Any) -> Outcome:
            if not plan.decision.rerank:
                return Outcome(item_response, plan.skip_status, 0.0)
            return await finish(plan, item_response, self.state.engine, options, opensearch=opensearch)

        outcomes = await asyncio.gather(*(one(p, r) for p, r in zip(plans, responses)))
        decoded["responses"] = [o.response for o in outcomes]
        filter_path = dict(search.params).get("filter_path")
        if filter_path:
            decoded = apply_filter_path(decoded, filter_path, opensearch=opensearch)
        return self._reranked(search, reply, decoded, outcomes)

    @staticmethod
    def _skip(search: _Search, statuses: list[str]) -> PassThrough:
        for status in statuses:
            metrics.record_search(status, search.options.variant)
        return PassThrough(search.raw, _status_lines(statuses, search.options.variant))

    async def _ask_cluster(
        self, search: _Search, body: bytes, params: list[tuple[str, str]], ndjson: bool
    ) -> Collected:
        """The rewritten search to the cluster, its response read whole (it is rewritten, not streamed)."""
        head = search.head
        lines = head.without(_DROPPED_ON_REWRITE)
        content_type = rewritten_content_type(search.headers, ndjson)
        if content_type is not None:
            lines.append(header_line(b"content-type", content_type))
        target = filtered_target(head.raw_path, head.raw_query, params)
        return await self.state.upstream.fetch(head.method, target, lines, body, authorized=head.authorized)

    @staticmethod
    def _reranked(search: _Search, reply: Collected, document: Any, outcomes: list[Outcome]) -> Reply:
        variant = search.options.variant
        for outcome in outcomes:
            metrics.record_search(outcome.status, variant)
        pretty = dict(search.params).get("pretty")
        option = orjson.OPT_INDENT_2 if pretty is not None and pretty != "false" else 0
        encoding = reply.head.get("Content-Encoding") or ""
        payload = _compress(orjson.dumps(document, option=option), encoding)
        took = f"{(time.perf_counter() - search.started) * 1000:.1f}".encode()
        lines = [*reply.head.lines, *_status_lines([o.status for o in outcomes], variant)]
        lines.append(header_line(b"X-Rerank-Took-Ms", took))
        return Reply(reply.status, reply.reason, lines, payload)


def _utf8(params: list[tuple[str, str]]) -> bool:
    """Whether every decoded parameter is valid UTF-8 (undecodable bytes survive decoding as surrogates)."""
    try:
        for key, value in params:
            key.encode("utf-8")
            value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _document(reply: Collected) -> Any:
    """The decoded JSON of a 200 answer, None for anything else."""
    if reply.status != 200:
        return None
    try:
        return orjson.loads(_decompress(reply.body, reply.head.get("Content-Encoding") or ""))
    except (ValueError, OSError, zlib.error, EOFError):
        return None


def _opensearch(reply: Collected) -> bool:
    """Elasticsearch (7.14+) marks every response; OpenSearch does not."""
    return reply.head.get("X-Elastic-Product") is None


def _as_sent(reply: Collected, statuses: list[str], variant: str) -> Reply:
    return Reply(reply.status, reply.reason, [*reply.head.lines, *_status_lines(statuses, variant)], reply.body)
