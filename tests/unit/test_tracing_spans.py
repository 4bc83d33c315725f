"""Tracing: the spans of a request (names, parentage, the caller's trace continued), the proxy's `traceparent` on
the rewritten search the cluster receives, and pass-through requests reaching the cluster byte for byte; spans go to
the SDK's InMemorySpanExporter. The cluster is the recording upstream (tests/recorder.py), which keeps what the
proxy wrote exactly."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from proxy import config as config_module
from proxy.config import ConfigError, TracingOptions, parse_config
from proxy.relay import Incoming
from proxy.tracing import Tracing
from proxy.wire import RequestHead
from tests.proxyrunner import MINILM, RunningProxy
from tests.rawhttp import RawConnection, request_bytes
from tests.recorder import Recorded, Recorder

REPO = Path(__file__).resolve().parents[2]
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
SEARCH = b'{"query":{"match":{"title":"protein folding"}}}'
MODELS = {"m": {"backend": "bi-encoder", "source": "x"}}


class Spans(InMemorySpanExporter):
    """Finished spans, with a wait for the ones a request is still to end (they end as its answer is written)."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.changed:
            result = super().export(spans)
            self.changed.notify_all()
        return result

    def server_spans(self, count: int) -> list[ReadableSpan]:
        """Waits for `count` server spans (each request's last), then returns every span."""
        def done() -> bool:
            return sum(s.kind is SpanKind.SERVER for s in self.get_finished_spans()) >= count
        with self.changed:
            assert self.changed.wait_for(done, 30), [s.name for s in self.get_finished_spans()]
        return list(self.get_finished_spans())


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    with Recorder() as running:
        yield running


@pytest.fixture(scope="module")
def traced(recorder: Recorder) -> Iterator[tuple[RunningProxy, Spans]]:
    config = {
        "upstreams": [recorder.url],
        "models": {"minilm": MINILM},
        "defaults": {"window": 5, "text": {"max_tokens": 64}, "timeout_ms": 60_000},
        "indices": [{"match": "idx", "text": {"fields": ["title", "text"]}}, {"match": "*", "enabled": False}],
        "tracing": {"enabled": True, "exporter": "none", "service_name": "proxy-under-test"},
    }
    with RunningProxy(config) as running:
        spans = Spans()
        provider = running.server.state.tracing.provider
        provider.add_span_processor(SimpleSpanProcessor(spans))
        yield running, spans


@pytest.fixture
def proxy(traced: tuple[RunningProxy, Spans], recorder: Recorder) -> tuple[RunningProxy, Spans]:
    traced[1].clear()
    recorder.requests.clear()
    return traced


def send(url: str, data: bytes, head_only: bool = False):
    with RawConnection(url) as conn:
        conn.send(data)
        return conn.response(head=head_only)


def hexid(value: int, width: int = 16) -> str:
    return f"{value:0{width}x}"


def by_name(spans: list[ReadableSpan]) -> Callable[[str], ReadableSpan]:
    def one(name: str) -> ReadableSpan:
        found = [s for s in spans if s.name == name]
        assert len(found) == 1, [s.name for s in spans]
        return found[0]
    return one


def searches_sent(recorder: Recorder) -> list[Recorded]:
    return [r for r in recorder.requests if b"_search" in r.target]


def header_values(request: Recorded, name: bytes) -> list[bytes]:
    return [v for k, v in request.headers if k.lower() == name]


def test_a_reranked_search_is_a_tree_under_the_callers_span_and_the_cluster_gets_the_proxys(proxy, recorder):
    running, spans = proxy
    response = send(running.url, request_bytes("POST", "/idx/_search?size=3", [
        ("Content-Type", "application/json"), ("traceparent", TRACEPARENT), ("tracestate", "vendor=opaque")],
        SEARCH))
    assert response.status == 200 and response.header("X-Rerank-Status") == b"reranked"
    found = spans.server_spans(1)
    span = by_name(found)
    server, upstream = span("POST /{index}/_search"), span("upstream")
    score, queue, model, rewrite = span("rerank.score"), span("rerank.queue"), span("rerank.model"), span(
        "rerank.rewrite")
    assert {hexid(s.context.trace_id, 32) for s in found} == {CLIENT_TRACE}
    assert server.kind is SpanKind.SERVER and hexid(server.parent.span_id) == CLIENT_SPAN and server.parent.is_remote
    for child in (upstream, score, rewrite):
        assert child.parent.span_id == server.context.span_id
    assert queue.parent.span_id == model.parent.span_id == score.context.span_id
    assert upstream.kind is SpanKind.CLIENT and upstream.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/{index}/_search"
    assert server.attributes["rerank.status"] == "reranked" and server.attributes["http.response.status_code"] == 200
    assert score.attributes["rerank.model"] == "minilm" and score.attributes["rerank.documents"] == 3
    assert server.start_time <= upstream.start_time < upstream.end_time <= score.start_time
    assert queue.start_time < queue.end_time <= model.start_time < model.end_time <= score.end_time
    assert score.end_time <= rewrite.start_time < rewrite.end_time <= server.end_time
    assert server.resource.attributes["service.name"] == "proxy-under-test"

    [sent] = searches_sent(recorder)
    # The proxy's own span in place of the client's: the cluster's spans hang off the proxy's upstream call.
    assert header_values(sent, b"traceparent") == [f"00-{CLIENT_TRACE}-{hexid(upstream.context.span_id)}-01".encode()]
    assert header_values(sent, b"tracestate") == [b"vendor=opaque"]
    assert orjson.loads(sent.body)["size"] == 5  # the rewritten request indeed


def test_a_search_without_a_traceparent_starts_a_trace_the_cluster_continues(proxy, recorder):
    running, spans = proxy
    response = send(running.url, request_bytes("POST", "/idx/_search", [("Content-Type", "application/json")],
                                               SEARCH))
    assert response.status == 200
    found = spans.server_spans(1)
    server, upstream = by_name(found)("POST /{index}/_search"), by_name(found)("upstream")
    assert server.parent is None
    [sent] = searches_sent(recorder)
    flags = hexid(upstream.context.trace_flags, 2)  # sampled (and, with a new SDK, W3C level 2's random id)
    assert int(flags, 16) & 1
    expected = f"00-{hexid(server.context.trace_id, 32)}-{hexid(upstream.context.span_id)}-{flags}"
    assert header_values(sent, b"traceparent") == [expected.encode()]
    assert header_values(sent, b"tracestate") == []


@pytest.mark.parametrize(("method", "target", "body"), [
    ("GET", "/idx/_doc/1?pretty&q=%ZZ", None),
    ("PUT", "/idx/_doc/2", b'{"title":"x"}'),
    ("HEAD", "/idx", None),
])
def test_a_pass_through_reaches_the_cluster_byte_for_byte_and_is_traced_beside(proxy, recorder, method, target, body):
    running, spans = proxy
    headers = [("traceparent", TRACEPARENT), ("tracestate", "vendor=opaque"), ("Authorization", "Basic c2VjcmV0"),
               ("X-Opaque-Id", "pt-1"), ("accept", "application/json")]
    if body is not None:
        headers.append(("Content-Type", "application/json"))
    sent = request_bytes(method, target, headers, body, host="client.example")
    response = send(running.url, sent, head_only=method == "HEAD")
    assert response.status == 200
    [received] = recorder.requests
    # What the relay adds or drops for any request: `Host` (the cluster's own, first). Nothing else differs.
    request_line, _, rest = sent.partition(b"\r\n")
    expected = request_line + b"\r\nhost: " + recorder.url.removeprefix("http://").encode() + b"\r\n" + rest.split(
        b"\r\n", 1)[1]
    assert received.head + received.body == expected

    found = spans.server_spans(1)
    server = next(s for s in found if s.kind is SpanKind.SERVER)
    upstream = by_name(found)("upstream")
    assert server.name == f"{method} " + ("/{index}/_doc/{id}" if "_doc" in target else "/{index}")
    assert hexid(server.parent.span_id) == CLIENT_SPAN and upstream.parent.span_id == server.context.span_id
    assert upstream.kind is SpanKind.CLIENT and server.start_time <= upstream.start_time <= upstream.end_time
    assert upstream.end_time <= server.end_time and server.attributes["http.response.status_code"] == 200


def test_a_skipped_search_goes_as_sent_with_the_callers_traceparent(proxy, recorder):
    running, spans = proxy
    sent = request_bytes("POST", "/idx/_search", [("Content-Type", "application/json"), ("X-Rerank", "off"),
                                                    ("traceparent", TRACEPARENT)], SEARCH)
    response = send(running.url, sent)
    assert response.header("X-Rerank-Status") == b"skipped; reason=header-off"
    [received] = searches_sent(recorder)
    assert header_values(received, b"traceparent") == [TRACEPARENT.encode()] and received.body == SEARCH
    found = spans.server_spans(1)
    server = by_name(found)("POST /{index}/_search")
    assert server.attributes["rerank.status"] == "skipped; reason=header-off"
    assert by_name(found)("upstream").parent.span_id == server.context.span_id
    assert not [s for s in found if s.name.startswith("rerank.")]


def test_a_search_skipped_after_its_body_is_read_is_traced_with_the_relays_upstream_call(proxy, recorder):
    running, spans = proxy
    body = b'{"query":{"match":{"title":"protein"}},"sort":["_doc"]}'
    response = send(running.url, request_bytes("POST", "/idx/_search", [("Content-Type", "application/json")],
                                               body))
    assert response.header("X-Rerank-Status") == b"skipped; reason=sort"
    found = spans.server_spans(1)
    server = by_name(found)("POST /{index}/_search")
    [upstream] = [s for s in found if s.name == "upstream"]
    assert upstream.parent.span_id == server.context.span_id and server.attributes["rerank.variant"] == "control"
    [received] = searches_sent(recorder)
    assert header_values(received, b"traceparent") == []  # a pass-through carries no header the client did not send


# ---- sampling -------------------------------------------------------------------------------------------------


def passed_through(headers: list[tuple[bytes, bytes]]) -> Incoming:
    head = RequestHead(method="GET", target=b"/idx/_doc/1")
    for name, value in headers:
        head.add(name, value)
    request = Incoming(head, SimpleNamespace(size=0), started=time.perf_counter())  # type: ignore[arg-type]
    request.upstream_at, request.upstream_s = time.perf_counter(), 0.001
    return request


def sampled_tracing(ratio: float, draws: list[float]) -> tuple[Tracing, InMemorySpanExporter]:
    tracing = Tracing(TracingOptions(enabled=True, exporter="none", sample_ratio=ratio), rng=lambda: draws.pop(0))
    spans = InMemorySpanExporter()
    tracing.provider.add_span_processor(SimpleSpanProcessor(spans))
    return tracing, spans


def test_new_traces_are_drawn_before_any_span_is_made():
    tracing, spans = sampled_tracing(0.25, [0.1, 0.6, 0.24, 0.25])
    ids = [tracing.finish(passed_through([]), None, 200, 10, None) for _ in range(4)]
    assert [trace_id is not None for trace_id in ids] == [True, False, True, False]
    assert len([s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]) == 2
    assert {f"{s.context.trace_id:032x}" for s in spans.get_finished_spans()} == {ids[0], ids[2]}


def test_a_callers_trace_follows_the_callers_decision_whatever_the_ratio():
    tracing, spans = sampled_tracing(0.0, [])  # nothing drawn: a continued trace is not the proxy's to draw
    sampled = tracing.finish(passed_through([(b"traceparent", TRACEPARENT.encode())]), None, 200, 10, None)
    unsampled = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"
    assert tracing.finish(passed_through([(b"traceparent", unsampled.encode())]), None, 200, 10, None) == CLIENT_TRACE
    assert sampled == CLIENT_TRACE
    [server, upstream] = sorted(spans.get_finished_spans(), key=lambda s: s.kind is SpanKind.SERVER)[::-1]
    assert server.kind is SpanKind.SERVER and hexid(server.parent.span_id) == CLIENT_SPAN
    assert upstream.name == "upstream" and upstream.parent.span_id == server.context.span_id


def test_a_none_ratio_traces_nothing_and_a_whole_one_draws_nothing():
    tracing, spans = sampled_tracing(0.0, [])
    assert tracing.finish(passed_through([]), None, 200, 10, None) is None and not spans.get_finished_spans()
    tracing, spans = sampled_tracing(1.0, [])
    assert tracing.finish(passed_through([]), None, 503, 10, "timeout") is not None
    server = next(s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER)
    assert server.status.status_code is StatusCode.ERROR and server.attributes["http.response.status_code"] == 503


# ---- configuration --------------------------------------------------------------------------------------------


def test_tracing_without_the_sdk_installed_is_refused_with_the_extra_named(monkeypatch):
    monkeypatch.setattr(config_module, "_installed", lambda module: not module.startswith("opentelemetry"))
    with pytest.raises(ConfigError) as refused:
        parse_config({"models": MODELS, "tracing": {"enabled": True, "exporter": "console"}})
    message = str(refused.value)
    assert "tracing: enabled: needs opentelemetry-api, opentelemetry-sdk, not installed here" in message
    assert "pip install 'rerank-proxy[tracing]'" in message
    assert parse_config({"models": MODELS, "tracing": {"enabled": False}}).tracing.enabled is False


def test_the_otlp_exporter_needs_its_own_package(monkeypatch):
    monkeypatch.setattr(config_module, "_installed", lambda module: "exporter" not in module)
    with pytest.raises(ConfigError, match=r"needs opentelemetry-exporter-otlp-proto-http.*or set `exporter: console`"):
        parse_config({"models": MODELS, "tracing": {"enabled": True}})
    assert parse_config({"models": MODELS, "tracing": {"enabled": True, "exporter": "none"}}).tracing.enabled


def test_the_options_are_validated():
    with pytest.raises(ConfigError, match="tracing.sample_ratio"):
        parse_config({"models": MODELS, "tracing": {"sample_ratio": 2}})
    with pytest.raises(ConfigError, match="tracing.exporter"):
        parse_config({"models": MODELS, "tracing": {"exporter": "jaeger"}})


def test_the_runtime_imports_no_opentelemetry_while_tracing_is_off():
    script = (
        "import json, sys\n"
        "import proxy.server, proxy.tracing\n"
        "from proxy.config import TracingOptions\n"
        "proxy.tracing.Tracing(TracingOptions())\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('opentelemetry'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == []
