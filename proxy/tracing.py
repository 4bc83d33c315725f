"""OpenTelemetry tracing, optional (`pip install 'rerank-proxy[tracing]'`, `tracing.enabled: true`).

Each data-port request gets a server span, `{method} {path template}` (the access log's template: never a raw path),
which continues the trace of the request's `traceparent` when it has one. Its children:

- `upstream`: the request to the cluster;
- for each reranked search (each reranked `_msearch` item): `rerank.score`, the window scored, with `rerank.queue`
  (the wait in the engine's queue before its first micro-batch) and `rerank.model` (from its first model call to its
  last) beneath, timed by the engine's own account (`rerank.engine.ScoreTiming`);
- `rerank.rewrite`: from the model's scores to the response written out (order, page, the client's view, JSON).

The proxy's own span context goes to the cluster in `traceparent` (and `tracestate`) only on the requests it rewrites
anyway: the reranked searches, whose request the cluster gets from the proxy, not from the client. Any other request
reaches the cluster byte for byte as the client sent it (the wire-format contract: a pass-through is relayed exact,
its head included), so there the client's own `traceparent`, if any, goes on untouched and the cluster's spans hang
off the client's; the proxy's server span is the client's child all the same.

Spans that need no context of their own on the wire (a pass-through's, the engine's) are made once the request has
been answered, from the times the proxy took as it went, so a request costs nothing until then. A new trace is drawn
(`sample_ratio`) before any span is made, so a request left out costs next to nothing; a continued one follows its
caller's sampled flag. Without the extra,
this module imports nothing of OpenTelemetry; config validation refuses `enabled: true` when it is missing.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .access_log import route_of
from .config import TracingOptions
from .wire import RequestHead, header_line

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

    from .facts import SearchFacts
    from .relay import Incoming
    from .search import Scored

_TRACE_HEADERS = (b"traceparent", b"tracestate")


def _ns(perf: float, offset: int) -> int:
    return int(perf * 1e9) + offset


def _offset() -> int:
    """What turns a time.perf_counter() reading into epoch nanoseconds, as spans are timed."""
    return time.time_ns() - time.perf_counter_ns()


def _trace_id(span: Span) -> str | None:
    context = span.get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


class Tracing:
    """The spans of one config. Disabled (`enabled` False): nothing is made, and nothing else here is called."""

    def __init__(self, options: TracingOptions, rng: Callable[[], float] = random.random):
        self.options = options
        self.enabled = options.enabled
        self.rng = rng
        self.provider: TracerProvider | None = None
        if not self.enabled:
            return
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        # A new trace is drawn here (`_root_sampled`), before any span is made: a request not drawn costs nothing.
        # One that continues its caller's follows the caller's decision (its `traceparent`'s sampled flag).
        self.provider = TracerProvider(
            sampler=ParentBased(ALWAYS_ON),
            resource=Resource.create({"service.name": options.service_name}), shutdown_on_exit=False,
        )
        exporter: SpanExporter | None = None
        if options.exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=options.otlp_endpoint)
        elif options.exporter == "console":
            exporter = ConsoleSpanExporter()
        if exporter is not None:  # exported off the event loop, in batches, by the processor's thread
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self.provider.get_tracer("rerank_proxy")
        self._propagator = TraceContextTextMapPropagator()
        self._trace = trace

    # -- the server span --

    def _parent(self, head: RequestHead) -> Any:
        """The context of the client's `traceparent` (None: a new trace)."""
        carrier: dict[str, str] = {}
        for name, value in head.pairs:
            lower = name.lower()
            if lower in _TRACE_HEADERS:
                carrier.setdefault(lower.decode(), value.decode("latin-1"))
        return self._propagator.extract(carrier) if carrier else None

    def _root_sampled(self) -> bool:
        ratio = self.options.sample_ratio
        return ratio >= 1.0 or (ratio > 0.0 and self.rng() < ratio)

    def _drawn(self, head: RequestHead) -> tuple[bool, Any]:
        """Whether the request is traced, and the caller's context it continues (None: a new trace, drawn here)."""
        parent = self._parent(head)
        return parent is not None or self._root_sampled(), parent

    def server_span(self, head: RequestHead, started: float) -> Span | None:
        """The request's server span, begun when its head was parsed (`started`, time.perf_counter()); None: a new
        trace that `sample_ratio` leaves out."""
        traced, parent = self._drawn(head)
        return self._server_span(head, started, _offset(), {}, parent) if traced else None

    def _server_span(self, head: RequestHead, started: float, offset: int, attributes: dict[str, Any],
                     parent: Any) -> Span:
        template = route_of(head.raw_path)[0]
        return self._tracer.start_span(
            f"{head.method} {template}", context=parent, kind=self._trace.SpanKind.SERVER,
            start_time=_ns(started, offset),
            attributes={"http.request.method": head.method, "http.route": template, **attributes},
        )

    def finish(self, incoming: Incoming | None, facts: SearchFacts | None, status: int, sent: int,
               error: str | None) -> str | None:
        """Ends the request's server span (made now, if the search path made none), with its `upstream` child when
        the relay passed the request through; its trace id, for the access log."""
        if incoming is None:  # a request that could not be parsed: nothing to name a span by
            return None
        parent = None
        if facts is None or not facts.traced:
            traced, parent = self._drawn(incoming.head)
            if not traced:
                return None  # a new trace not drawn: decided before anything is made
        offset = _offset()
        now = time.perf_counter()
        attributes: dict[str, Any] = {
            "http.response.status_code": status, "http.request.body.size": incoming.body.size,
            "http.response.body.size": sent,
        }
        if facts is not None and facts.statuses:
            attributes["rerank.status"] = ", ".join(facts.statuses)
            if facts.variant is not None:
                attributes["rerank.variant"] = facts.variant
        if facts is not None and facts.traced:  # the search path made its span, or drew none
            span = facts.span
            if span is None:
                return None
            if span.is_recording():
                span.set_attributes(attributes)
        else:  # made now, whole: the request needed no span while it was served
            span = self._server_span(incoming.head, incoming.started, offset, attributes, parent)
        if not span.is_recording():  # its caller's trace is sampled out: nothing of it is kept
            span.end()
            return _trace_id(span)
        if incoming.upstream_s is not None:  # the relay passed it through (a claimed search's own is made live)
            upstream: dict[str, Any] = {"http.request.method": incoming.head.method}
            if error is None:
                upstream["http.response.status_code"] = status
            self.timed(span, "upstream", incoming.upstream_at, incoming.upstream_at + incoming.upstream_s, offset,
                       kind=self._trace.SpanKind.CLIENT, attributes=upstream)
        if status >= 500 or error is not None:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error or f"status {status}"))
        span.end(end_time=_ns(now, offset))
        return _trace_id(span)

    # -- children --

    def timed(self, parent: Span, name: str, start: float, end: float, offset: int | None = None, *,
              kind: Any = None, attributes: dict[str, Any] | None = None) -> Span:
        """A finished child span of `parent`, from `start` to `end` (time.perf_counter())."""
        offset = _offset() if offset is None else offset
        span = self.child(parent, name, start, offset, kind=kind, attributes=attributes)
        span.end(end_time=_ns(end, offset))
        return span

    def child(self, parent: Span, name: str, start: float | None = None, offset: int | None = None, *,
              kind: Any = None, attributes: dict[str, Any] | None = None) -> Span:
        """A child span of `parent` begun at `start` (default: now), for the caller to end."""
        start_time = None if start is None else _ns(start, _offset() if offset is None else offset)
        return self._tracer.start_span(
            name, context=self._trace.set_span_in_context(parent), kind=kind or self._trace.SpanKind.INTERNAL,
            start_time=start_time, attributes=attributes,
        )

    def upstream(self, parent: Span, method: str) -> Span:
        """The live `upstream` span of a rewritten request to the cluster (its context goes in `propagated`)."""
        return self.child(parent, "upstream", kind=self._trace.SpanKind.CLIENT,
                          attributes={"http.request.method": method})

    def answered(self, span: Span, status: int | None) -> None:
        """Ends an `upstream` span: the cluster's status, or None when it could not be asked or broke off."""
        if status is None:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, "no answer from the cluster"))
        else:
            span.set_attribute("http.response.status_code", status)
        span.end()

    def propagated(self, span: Span, lines: Sequence[bytes]) -> list[bytes]:
        """A rewritten request's header lines with `span`'s context in `traceparent` (and `tracestate`) in place of
        the client's: the cluster's spans then hang off the proxy's."""
        kept = [line for line in lines if line.split(b":", 1)[0].strip().lower() not in _TRACE_HEADERS]
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        return kept + [header_line(name.encode(), value.encode("latin-1")) for name, value in carrier.items()]

    def scoring(self, parent: Span, scored: Scored, model: str | None) -> None:
        """The `rerank.score` span of one scored window, with the engine's queue wait and model calls beneath."""
        offset = _offset()
        end = scored.started + scored.took_ms / 1000
        attributes: dict[str, Any] = {"rerank.status": scored.status, "rerank.documents": len(scored.texts)}
        if model is not None:
            attributes["rerank.model"] = model
        span = self.child(parent, "rerank.score", scored.started, offset, attributes=attributes)
        timing = scored.timing
        if timing is not None and timing.enqueued is not None and timing.queue_s is not None:
            self.timed(span, "rerank.queue", timing.enqueued, timing.enqueued + timing.queue_s, offset)
        if timing is not None and timing.model_started is not None and timing.model_ended is not None:
            self.timed(span, "rerank.model", timing.model_started, timing.model_ended, offset,
                       attributes={"rerank.model_busy_ms": round(timing.model_s * 1000, 3)})
        span.end(end_time=_ns(end, offset))

    def close(self) -> None:
        """Exports what is pending and stops (blocking: call it off the loop)."""
        if self.provider is not None:
            self.provider.shutdown()
