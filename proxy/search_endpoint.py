"""The HTTP side of a search: from the client's request to the rerank pipeline (`search.py`) and back.

A search is read whole (up to `max_search_body_bytes`: a larger one is answered 413, as the clusters answer a body
over their own limit), planned, and either passed through as the client sent it (skipped: the relay then streams
the cluster's answer untouched) or sent to the cluster rewritten, its answer reranked and re-serialised. The
rewritten request keeps the client's raw path, every query parameter the proxy does not take over byte for byte,
and the client's media types.

A 200 the proxy cannot read or write back (nested past what orjson reads, or past what the `_source`/`filter_path`
re-filtering recurses to) is not answered from the rewritten request, which asked for another page: the client's
request goes to the cluster again as it came, and its answer is relayed with `fallback; reason=unparseable` or
`fallback; reason=unserialisable`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import gzip
import re
import time
import zlib
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from . import metrics
from .capture import search_record
from .errors import es_error_reply
from .experiment_search import finish_interleaved, plan_interleaved
from .experiments import assign, search_id, session_key
from .facts import SearchFacts
from .interleaving import search_seed
from .ndjson import NdjsonError, TooDeep, dumps, item_index, loads, parse_msearch, serialize_msearch, strict_loads
from .relay import Incoming, PassThrough
from .resolve import ResultWindows, smallest_result_window
from .routing import Kind
from .search import Outcome, Plan, RequestOptions, Rerank, Scored, Skip, finish, plan_search, plan_template
from .shadow import ShadowResult
from .upstream import Collected
from .variants import CONTROL, NO_VARIANT, UnknownVariant, VariantChoice, choose_variant
from .view import apply_filter_path
from .wire import HeaderView, Reply, RequestFacts, RequestHead, filtered_target, header_line, reason_for

_NON_JSON = ("smile", "cbor", "yaml")
_COMPATIBLE = re.compile(r"compatible-with\s*=\s*(\d+)")
_DROPPED_ON_REWRITE = (b"content-encoding",)  # a rewritten body is sent as plain JSON
_SINGLE = (Kind.SEARCH, Kind.SEARCH_TEMPLATE)  # one search each (an `_msearch` says how each of its items went)


class _Inflated(ValueError):
    """A compressed body that inflates past the limit: not held in memory, and not the proxy's to refuse."""


def _decompress(data: bytes, encoding: str, limit: int | None = None) -> bytes:
    """The body as sent before `encoding`; at most `limit` bytes of it, else `_Inflated`. Strict: anything the
    cluster might read differently (a damaged stream, bytes after the last gzip member) raises, and the request is
    then the cluster's to answer as sent."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity") or not data:  # no body at all, whatever it says it is encoded with
        return data
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise ValueError(f"unsupported content encoding {encoding}")
    out: list[bytes] = []
    size = 0
    while True:  # gzip members follow one another (RFC 1952 2.2): the cluster reads them as one stream
        stream = zlib.decompressobj(wbits)
        chunk = stream.decompress(data, 0 if limit is None else limit + 1 - size)
        size += len(chunk)
        if limit is not None and size > limit:
            raise _Inflated(f"the body inflates past {limit} bytes")
        out.append(chunk)
        if not stream.eof:
            raise EOFError("the compressed body ends before its stream does")
        data = stream.unused_data
        if not data or wbits == zlib.MAX_WBITS:
            break
    if data:
        raise ValueError("bytes after the compressed stream")
    return b"".join(out)


def _compress(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return gzip.compress(data, compresslevel=6, mtime=0)
    if encoding == "deflate":
        return zlib.compress(data)
    return data


@functools.lru_cache(maxsize=1024)
def _status_lines(statuses: tuple[str, ...], variant: str) -> tuple[bytes, bytes]:
    return (
        header_line(b"X-Rerank-Status", ", ".join(statuses).encode()),
        header_line(b"X-Rerank-Variant", variant.encode()),
    )


def header_text(value: str | None) -> str | None:
    """A header value (as HeaderView gives it, latin-1) as text: its bytes read as UTF-8 where they are UTF-8 (curl,
    Go, Java and JavaScript clients send it so), else as latin-1 (what Python's http.client writes a str as)."""
    if not value:
        return None
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return value


def request_options(headers: Mapping[str, str], variant: str) -> RequestOptions:
    force = headers.get("X-Rerank", "").strip().lower() or None
    return RequestOptions(
        force=force if force in ("on", "off") else None,
        variant=variant,
        query_override=header_text(headers.get("X-Rerank-Query")) or None,
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
    facts: SearchFacts  # what was decided and measured, for the access log and the spans
    label: str  # the `index` label of its metrics


class SearchEndpoint:
    """`_search`, `_msearch` and their template variants, for one state of the proxy (config, upstream, engine)."""

    def __init__(self, state: Any):
        self.state = state
        upstream = state.upstream

        async def lookup(expression: str) -> int | None:
            return await _max_result_window(upstream, expression)

        self.windows = ResultWindows(lookup, state.config.upstream.alias_cache_ttl_s)
        self.index_labels = tuple(state.config.metrics.index_labels)

    def _label(self, index: str | None) -> str:
        return metrics.index_label(self.index_labels, index)

    def decide_on_head(self, head: RequestFacts, kind: Kind, index: str | None) -> PassThrough | None:
        """A search skipped before a byte of its body is read (`X-Rerank: off`): the body streams to the cluster,
        and the answer back, as a pass-through's do. None: `handle` serves it (an unknown variant included)."""
        if kind not in _SINGLE or not _forced_off(head):
            return None
        try:
            choice = self._variant(head)
        except UnknownVariant:
            return None
        lines, labels = _header_off(choice.name, self._label(index))
        metrics.SEARCHES.inc(*labels)  # as `_passed_through` records it, from one remembered step
        return PassThrough(None, lines, SearchFacts(_HEADER_OFF, choice.name))

    def _variant(self, head: RequestFacts) -> VariantChoice:
        config = self.state.config
        if config.ab is not None:
            choice = choose_variant(config, head.header_view())
        elif head.own_header(b"x-rerank-variant") is None:
            choice = NO_VARIANT
        else:  # without an A/B split only the proxy's own headers choose: the rest need no reading
            choice = choose_variant(config, HeaderView(head.own))
        metrics.VARIANTS.inc(choice.name, choice.how)
        return choice

    async def handle(self, incoming: Incoming, kind: Kind, index: str | None) -> Reply | PassThrough:
        started = time.perf_counter()
        head = incoming.head
        config = self.state.config
        facts = incoming.note = SearchFacts()
        if self.state.tracing.enabled:  # begun now: the rewritten search's `upstream` span is its child
            facts.span, facts.traced = self.state.tracing.server_span(head, incoming.started), True
        label = self._label(index)
        try:
            choice = self._variant(head)
        except UnknownVariant as err:
            return es_error_reply(400, "illegal_argument_exception", str(err))
        if kind in _SINGLE and _forced_off(head):  # as `decide_on_head` would have said
            return _passed_through(None, ("skipped; reason=header-off",), choice.name, facts, (label,))
        limit = config.max_search_body_bytes
        declared = head.content_length
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _too_large(incoming, facts, label)  # at once: not a byte of the body is read
        raw = await incoming.body.read(limit)
        if raw is None:  # a chunked body that grew past the limit: read no further, close (as the clusters do)
            return await _too_large(incoming, facts, label, close=True)
        headers = head.header_view()
        search = _Search(head, headers, raw, head.query(), request_options(headers, choice.name), started, facts,
                         label)
        try:
            text: bytes | None = _decompress(raw, headers.get("Content-Encoding", ""), limit)
        except _Inflated:  # what the proxy does not hold: the cluster's to answer (over its own limit: its 413)
            return self._skip(search, ["skipped; reason=body-too-large"])
        except (OSError, ValueError, zlib.error, EOFError):
            text = None
        accept = headers.get("Accept", "") + dict(search.params).get("format", "")
        if text is None or any(fmt in accept for fmt in _NON_JSON):
            return self._skip(search, ["skipped; reason=non-json"])
        if kind in (Kind.MSEARCH, Kind.MSEARCH_TEMPLATE):
            return await self._msearch(search, text, index, kind)
        if not _utf8(search.params):  # the cluster refuses these; a rewritten request could not even carry them
            return self._skip(search, ["skipped; reason=bad-request"])
        try:
            # Strict: duplicate keys, which the cluster refuses, must not be collapsed into a body it accepts.
            body = strict_loads(text) if text.strip() else None
        except TooDeep:  # the cluster may take it (OpenSearch has no depth limit): its own answer, as sent
            return self._skip(search, ["skipped; reason=too-deep"])
        except NdjsonError:
            body = []  # not an object: the cluster answers with its own parse error
        if body is not None and not isinstance(body, dict):
            return self._skip(search, ["skipped; reason=bad-request"])
        if kind is Kind.SEARCH and config.experiments and choice.how != "header" and search.options.force is None:
            interleaved = await self._interleaved(search, index, body)
            if interleaved is not None:
                return interleaved
        planner = plan_template if kind is Kind.SEARCH_TEMPLATE else plan_search
        plan = await planner(
            self.state.config, self.state.resolver, index, body, search.params, search.options, self.windows
        )
        if isinstance(plan, Skip):
            return self._skip(search, [plan.skip_status])
        reply = await self._ask_cluster(search, dumps(plan.upstream_body), plan.upstream_params, False)
        try:
            document = _document(reply)
        except _Unparseable:
            return self._skip(search, ["fallback; reason=unparseable"])
        if document is None:
            return _as_sent(search, reply, ["skipped; reason=cluster-error"])
        try:
            outcome = await finish(plan, document, self.state.engine, search.options, opensearch=_opensearch(reply))
            metrics.RERANK_SECONDS.labels(search.label).observe(outcome.took_ms / 1000)
            served = self._reranked(search, reply, outcome.response, [outcome.status])
        except _UNSERIALISABLE:
            return self._skip(search, ["fallback; reason=unserialisable"])
        self._scored(search, [(outcome.scored, plan.model)] if outcome.scored is not None else [])
        captured = self._after(search, index, plan, outcome)
        if captured is not None:
            served.lines.append(header_line(b"X-Rerank-Search-Id", captured.encode()))
        return served

    def _after(self, search: _Search, index: str | None, plan: Plan, outcome: Outcome) -> str | None:
        """What a served search leaves behind, none of which the client waits for: its capture record (when
        sampled; then its search id is returned) and its shadow scoring."""
        scored = outcome.scored
        if not isinstance(plan, Rerank) or scored is None:
            return None
        state = self.state
        captured = None
        if state.capture is not None and state.capture.sampled(plan.settings.capture_sample):
            captured = search_id(None)
            took_ms = (time.perf_counter() - search.started) * 1000
            record = search_record(scored, index=index, variant=plan.variant, model=plan.model, took_ms=took_ms)
            state.capture.search(captured, record, plan.query, scored.texts)
        on_result = functools.partial(self._shadow_captured, captured) if captured is not None else None
        state.shadows.offer(state.engine, plan, scored, on_result)
        return captured

    def _shadow_captured(self, captured: str, result: ShadowResult) -> None:
        if self.state.capture is not None:
            self.state.capture.shadow(captured, {
                "model": result.model, "order": result.order, "took_ms": round(result.took_ms, 3),
                "agreement": dataclasses.asdict(result.agreement)})

    async def _interleaved(self, search: _Search, index: str | None, body: dict[str, Any] | None) -> Reply | None:
        """A search an experiment takes, served its page of the two sides' merged list; None: no experiment takes
        it (or neither side would rerank it), and it is served as any other."""
        state = self.state
        config = state.config
        sticky = config.events.sticky_header
        key = session_key(index, body, search.params, search.headers.get(sticky) if sticky else None)
        name = assign(config, index, key)
        if name is None:
            return None
        def plan_side(variant: str) -> Awaitable[Plan]:
            options = dataclasses.replace(search.options, variant=variant)
            return plan_search(config, state.resolver, index, body, search.params, options, self.windows)

        plan = await plan_interleaved(config, name, body, search.params, plan_side)
        if plan is None:
            return None
        search = dataclasses.replace(search, options=dataclasses.replace(search.options, variant=f"experiment:{name}"))
        reply = await self._ask_cluster(search, dumps(plan.upstream_body), plan.upstream_params, False)
        try:
            document = _document(reply)
        except _Unparseable:
            return None  # asked again as planned for the search's own variant, which falls back the same way
        if document is None:
            return _as_sent(search, reply, ["skipped; reason=cluster-error"])
        try:
            outcome = await finish_interleaved(plan, document, state.engine, seed=search_seed(key),
                                               explain=search.options.explain, opensearch=_opensearch(reply))
            metrics.RERANK_SECONDS.labels(search.label).observe(outcome.took_ms / 1000)
            served = self._reranked(search, reply, outcome.response, [outcome.status])
        except _UNSERIALISABLE:
            return None
        self._scored(search, [(scored, side.model) for scored, side in zip(outcome.sides, plan.sides)
                              if isinstance(side, Rerank)])
        if outcome.interleaving is None:
            metrics.EXPERIMENT_EXCLUDED.inc(name, outcome.excluded or "unknown")
            return served
        served_id = search_id(search.headers.get("X-Rerank-Search-Id"))
        first_page = state.experiments.served(served_id, name, outcome.interleaving)
        capture = state.capture
        rate = next((side.settings.capture_sample for side in plan.sides if isinstance(side, Rerank)), None)
        if first_page and capture is not None and outcome.scored is not None and capture.sampled(rate):
            took_ms = (time.perf_counter() - search.started) * 1000
            record = search_record(outcome.scored, index=index, variant=search.options.variant, model=None,
                                   took_ms=took_ms, experiment=name)
            query = next(side.query for side in plan.sides if isinstance(side, Rerank))
            capture.search(served_id, record, query, outcome.scored.texts)
        served.lines += [header_line(b"X-Rerank-Search-Id", served_id.encode()),
                         header_line(b"X-Rerank-Experiment", name.encode())]
        return served

    async def _msearch(self, search: _Search, text: bytes, index: str | None, kind: Kind) -> Reply | PassThrough:
        try:
            items = parse_msearch(text) if _utf8(search.params) else []
        except TooDeep:
            return self._skip(search, ["skipped; reason=too-deep"])
        except NdjsonError:
            items = []
        if not items:
            return self._skip(search, ["skipped; reason=bad-request"])
        planner = plan_template if kind is Kind.MSEARCH_TEMPLATE else plan_search
        config, resolver, options = self.state.config, self.state.resolver, search.options
        plans: list[Plan] = await asyncio.gather(*(
            planner(config, resolver, item_index(item, index), item.body, [], options, self.windows) for item in items
        ))
        labels = [self._label(item_index(item, index)) for item in items]
        if all(isinstance(p, Skip) for p in plans):
            return self._skip(search, [p.skip_status for p in plans if isinstance(p, Skip)], labels)
        lines = []
        for item, plan in zip(items, plans):
            lines += [item.raw_header, dumps(plan.upstream_body) if isinstance(plan, Rerank) else item.raw_body]
        kept = [(k, v) for k, v in search.params if k != "filter_path"]
        reply = await self._ask_cluster(search, serialize_msearch(lines), kept, True)
        try:
            decoded = _document(reply)
        except _Unparseable:
            return self._skip(search, ["fallback; reason=unparseable"])
        responses = decoded.get("responses") if isinstance(decoded, dict) else None
        if not isinstance(responses, list) or len(responses) != len(plans):
            return _as_sent(search, reply, ["skipped; reason=cluster-error"])
        opensearch = _opensearch(reply)

        async def one(plan: Plan, item_response: Any) -> Outcome:
            if isinstance(plan, Skip):
                return Outcome(item_response, plan.skip_status, 0.0)
            return await finish(plan, item_response, self.state.engine, options, opensearch=opensearch)

        try:
            outcomes = await asyncio.gather(*(one(p, r) for p, r in zip(plans, responses)))
            decoded["responses"] = [o.response for o in outcomes]
            filter_path = dict(search.params).get("filter_path")
            if filter_path:
                decoded = apply_filter_path(decoded, filter_path, opensearch=opensearch)
            served = self._reranked(search, reply, decoded, [o.status for o in outcomes], labels)
        except _UNSERIALISABLE:
            return self._skip(search, ["fallback; reason=unserialisable"])
        self._scored(search, [(o.scored, p.model) for p, o in zip(plans, outcomes)
                              if isinstance(p, Rerank) and o.scored is not None])
        for item, plan, outcome in zip(items, plans, outcomes):
            self._after(search, item_index(item, index), plan, outcome)
        return served

    @staticmethod
    def _skip(search: _Search, statuses: list[str], labels: Sequence[str] | None = None) -> PassThrough:
        return _passed_through(search.raw, statuses, search.options.variant, search.facts,
                               labels or [search.label] * len(statuses))

    async def _ask_cluster(
        self, search: _Search, body: bytes, params: list[tuple[str, str]], ndjson: bool
    ) -> Collected:
        """The rewritten search to the cluster, its response read whole (it is rewritten, not streamed).

        When traced, this request (and only this kind: the proxy writes it anyway) carries the proxy's `upstream`
        span in `traceparent`, in place of the client's; pass-through requests go as the client sent them."""
        head = search.head
        lines = head.without(_DROPPED_ON_REWRITE)
        content_type = rewritten_content_type(search.headers, ndjson)
        if content_type is not None:
            lines.append(header_line(b"content-type", content_type))
        target = filtered_target(head.raw_path, head.raw_query, params)
        facts, tracing = search.facts, self.state.tracing
        span = tracing.upstream(facts.span, head.method) if facts.span is not None else None
        if span is not None:
            lines = tracing.propagated(span, lines)
        facts.upstream_at = sent = time.perf_counter()
        status = None
        try:
            reply: Collected = await self.state.upstream.fetch(
                head.method, target, lines, body, authorized=head.authorized
            )
            status = reply.status
        finally:
            facts.upstream_s = (facts.upstream_s or 0.0) + time.perf_counter() - sent
            if span is not None:
                tracing.answered(span, status)
        return reply

    def _scored(self, search: _Search, scored: Sequence[tuple[Scored, str | None]]) -> None:
        """The engine's account of each scored window, on the search's facts; when traced, each window's spans and
        the response rewrite's (from the last scores to the answer written)."""
        facts = search.facts
        for window, _ in scored:
            facts.scored(window.timing)
        if facts.span is None or not scored or not facts.span.is_recording():
            return
        tracing = self.state.tracing
        for window, model in scored:
            tracing.scoring(facts.span, window, model)
        rewrite_from = max(window.started + window.took_ms / 1000 for window, _ in scored)
        tracing.timed(facts.span, "rerank.rewrite", rewrite_from, time.perf_counter())

    @staticmethod
    def _reranked(search: _Search, reply: Collected, document: Any, statuses: list[str],
                  labels: Sequence[str] | None = None) -> Reply:
        variant = search.options.variant
        pretty = dict(search.params).get("pretty")
        encoding = reply.head.get("Content-Encoding") or ""
        payload = _compress(dumps(document, pretty=pretty is not None and pretty != "false"), encoding)
        for status, label in zip(statuses, labels or [search.label] * len(statuses)):
            metrics.record_search(status, variant, label)  # once the answer is written: else it is a fallback
        search.facts.decided(tuple(statuses), variant)
        took = f"{(time.perf_counter() - search.started) * 1000:.1f}".encode()
        lines = [*reply.head.lines, *_status_lines(tuple(statuses), variant)]
        lines.append(header_line(b"X-Rerank-Took-Ms", took))
        return Reply(reply.status, reply.reason, lines, payload)


def _forced_off(head: RequestFacts) -> bool:
    """`X-Rerank: off`, read as `request_options` reads it."""
    value = head.own_header(b"x-rerank")
    return value is not None and value.decode("latin-1").strip().lower() == "off"


_HEADER_OFF = ("skipped; reason=header-off",)


@functools.lru_cache(maxsize=1024)  # per variant and index label: what every skipped search of them is told
def _header_off(variant: str, label: str) -> tuple[tuple[bytes, bytes], tuple[str, ...]]:
    """A search skipped for `X-Rerank: off`: its status lines and its `SEARCHES` labels."""
    return _status_lines(_HEADER_OFF, variant), (*metrics.split_status(_HEADER_OFF[0]), variant, label)


def _passed_through(body: bytes | None, statuses: Sequence[str], variant: str, facts: SearchFacts,
                    labels: Sequence[str]) -> PassThrough:
    for status, label in zip(statuses, labels):
        metrics.record_search(status, variant, label)
    facts.decided(tuple(statuses), variant)
    return PassThrough(body, list(_status_lines(tuple(statuses), variant)), facts)


def _utf8(params: list[tuple[str, str]]) -> bool:
    """Whether every decoded parameter is valid UTF-8 (undecodable bytes survive decoding as surrogates)."""
    try:
        for key, value in params:
            key.encode("utf-8")
            value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Unparseable(Exception):
    """A 200 answer the proxy cannot read (nested deeper than orjson reads, or not JSON after all)."""


# What re-serialising a response can run into: parts nested past what the recursive steps (`_source` filtering,
# `filter_path`) walk, or past what orjson writes.
_UNSERIALISABLE = (RecursionError, orjson.JSONEncodeError)


def _document(reply: Collected) -> Any:
    """The decoded JSON of a 200 answer, None for any other status; raises `_Unparseable`."""
    if reply.status != 200:
        return None
    try:
        return loads(_decompress(reply.body, reply.head.get("Content-Encoding") or ""))
    except (ValueError, OSError, zlib.error, EOFError):
        raise _Unparseable from None


async def _too_large(incoming: Incoming, facts: SearchFacts | None = None, label: str = metrics.OTHER_INDEX,
                     close: bool = False) -> Reply:
    """A search body over `max_search_body_bytes`: what both clusters answer a body over their
    `http.max_content_length` (an empty 413, no content type). A declared body is then read and dropped by the
    relay, and the connection kept, as the clusters do; a chunked one that grew past the limit ends the connection
    (`close`), as it does on the clusters."""
    metrics.SEARCHES.inc("refused", "body-too-large", CONTROL, label)
    if facts is not None:
        facts.decided(("refused; reason=body-too-large",), CONTROL)
    body = incoming.body
    if body.finished:
        await body.read(body.size)  # releases what is buffered
    # The clusters say `connection: close` when the client asked to close; when the relay closes on its own
    # account (a body left unread on a keep-alive connection) it says so itself.
    lines = [] if incoming.head.keep_alive else [b"connection: close\r\n"]
    return Reply(413, reason_for(413), lines, b"", close=close, version="1.1")  # HTTP/1.1 to any client, as theirs


async def _max_result_window(upstream: Any, expression: str) -> int | None:
    """The smallest `index.max_result_window` of the indices `expression` names, as the cluster has them (None:
    not known). Another cluster's indices (`remote:index`) are not this cluster's to tell."""
    names = [name for name in expression.split(",") if name and ":" not in name]
    if not names:
        return None
    target = (
        f"/{quote(','.join(names), safe=',*')}/_settings/index.max_result_window"
        "?include_defaults=true&flat_settings=true&ignore_unavailable=true&allow_no_indices=true"
        "&expand_wildcards=open"
    )
    found = await upstream.get_json_bytes(target.encode())
    try:
        return smallest_result_window(orjson.loads(found)) if found is not None else None
    except orjson.JSONDecodeError:
        return None


def _opensearch(reply: Collected) -> bool:
    """Elasticsearch (7.14+) marks every response; OpenSearch does not."""
    return reply.head.get("X-Elastic-Product") is None


def _as_sent(search: _Search, reply: Collected, statuses: list[str]) -> Reply:
    variant = search.options.variant
    search.facts.decided(tuple(statuses), variant)
    return Reply(reply.status, reply.reason, [*reply.head.lines, *_status_lines(tuple(statuses), variant)],
                 reply.body)
