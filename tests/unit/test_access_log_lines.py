"""The access log's pure parts: a request's record as a JSON line (its fields, the path template, nothing of the
query string, headers or body), the sampling decision with an injected draw, and the writer behind the logger."""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from prometheus_client import REGISTRY

from proxy import access_log
from proxy.access_log import AccessLog, path_template, request_record, route_of
from proxy.config import AccessLogOptions, ConfigError, parse_config
from proxy.facts import SearchFacts
from proxy.relay import Incoming
from proxy.server import ProxyServer
from proxy.upstream import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from proxy.wire import RequestHead
from rerank.engine import ScoreTiming

FIELDS = {
    "ts", "request_id", "opaque_id", "method", "path", "index", "status", "bytes_in", "bytes_out", "upstream_ms",
    "queue_ms", "model_ms", "rerank_status", "rerank_reason", "variant", "total_ms", "error", "trace_id",
}
SECRETS = ("dXNlcjpodW50ZXIy", "sk-live-0123456789", "session=abcdef", "topsecretquery", "hunter2", "bodysecret")


def incoming(method: str, target: bytes, headers: list[tuple[bytes, bytes]], body_size: int = 0,
             started: float = 0.0) -> Incoming:
    head = RequestHead(method=method, target=target)
    for name, value in headers:
        head.add(name, value)
    return Incoming(head, SimpleNamespace(size=body_size), started=started)  # type: ignore[arg-type]


@pytest.mark.parametrize(("path", "template", "index"), [
    ("/", "/", None),
    ("/products/_doc/42", "/{index}/_doc/{id}", "products"),
    ("/products/_doc/_hidden", "/{index}/_doc/{id}", "products"),  # an id may look like an API word
    ("/products/_update/a b", "/{index}/_update/{id}", "products"),
    ("/products/_source/7", "/{index}/_source/{id}", "products"),
    ("/products/_search", "/{index}/_search", "products"),
    ("/logs-*,archive/_msearch/template", "/{index}/_msearch/template", "logs-*,archive"),
    ("/_search", "/_search", None),
    ("/_search/scroll/DXF1ZXJ5QW5kRmV0Y2gBAAAAAAAAAD4WYm9laVYtZndUQlNsdDcwakFMNjU1QQ==",
     "/_search/scroll/{name}", None),
    ("/_cluster/health", "/_cluster/health", None),
    ("/_cluster/health/secret-index", "/_cluster/health/{name}", None),
    ("/_cat/indices/secret-*", "/_cat/indices/{name}", None),
    ("/_nodes/node-1a/stats", "/_nodes/{name}/stats", None),
    ("/_security/user/alice", "/_security/user/{name}", None),
    ("/products/_alias/Shop", "/{index}/_alias/{name}", "products"),
    ("/products//_doc/", "/{index}//_doc/", "products"),
    ("/a/b/c/d/e/f/g/h/i/j", "/{index}/{name}/{name}/{name}/{name}/{name}/{name}/{name}/...", "a"),
    ("http://user:pass@evil.example/x", "-", None),
    ("*", "-", None),
])
def test_path_template(path, template, index):
    assert path_template(path) == (template, index)


def test_the_path_is_decoded_as_the_proxy_routes_it():
    assert route_of(b"/shop%2Dv2/%5Fsearch") == ("/{index}/_search", "shop-v2")
    # Bytes that are not UTF-8 still make valid JSON text.
    assert route_of(b"/caf%E9/_doc/1") == ("/{index}/_doc/{id}", "caf\ufffd")


def test_a_record_is_a_line_with_every_field_and_no_query_string_header_or_body():
    request = incoming("POST", b"/products/_search?q=topsecretquery&api_key=sk-live-0123456789", [
        (b"Authorization", b"Basic dXNlcjpodW50ZXIy"),
        (b"X-Api-Key", b"sk-live-0123456789"),
        (b"Cookie", b"session=abcdef"),
        (b"X-Opaque-Id", b"checkout-7"),
        (b"Content-Type", b"application/json"),
    ], body_size=123)
    facts = SearchFacts(upstream_s=0.0041)
    facts.decided(("reranked",), "control")
    facts.scored(ScoreTiming(queue_s=0.0012345, model_s=0.0385, model_started=1.0, model_ended=1.04))
    line = request_record(request, 200, 4567, None, facts, trace_id="0af7651916cd43dd8448eb211c80319c").line()
    fields = orjson.loads(line)
    assert set(fields) == FIELDS
    assert fields | {"ts": None, "request_id": None, "total_ms": None} == {
        "ts": None, "request_id": None, "opaque_id": "checkout-7", "method": "POST", "path": "/{index}/_search",
        "index": "products", "status": 200, "bytes_in": 123, "bytes_out": 4567, "upstream_ms": 4.1,
        "queue_ms": 1.234, "model_ms": 38.5, "rerank_status": "reranked", "rerank_reason": None,
        "variant": "control", "total_ms": None, "error": None, "trace_id": "0af7651916cd43dd8448eb211c80319c",
    }
    assert fields["ts"].endswith("Z") and len(fields["request_id"]) == 16 and fields["total_ms"] > 0
    text = line.decode()
    assert "?" not in text and not any(secret in text for secret in SECRETS)


def test_the_made_up_request_ids_differ():
    ids = {orjson.loads(request_record(incoming("GET", b"/", []), 200, 0, None, None).line())["request_id"]
           for _ in range(100)}
    assert len(ids) == 100 and {len(i) for i in ids} == {16}


def test_the_timestamp_is_utc_with_milliseconds():
    assert access_log._timestamp(1735787045.678912) == "2025-01-02T03:04:05.678Z"
    assert access_log._timestamp(1735787046.0) == "2025-01-02T03:04:06.000Z"


def test_the_text_of_a_record_is_its_line_never_what_it_holds():
    record = request_record(incoming("GET", b"/idx/_doc/hunter2", [(b"Authorization", b"Basic dXNlcjpodW50ZXIy")]),
                            200, 10, None, None)
    for text in (str(record), repr(record), logging.LogRecord("x", logging.INFO, "", 0, record, None, None)
                 .getMessage()):
        assert set(orjson.loads(text)) == FIELDS
        assert not any(secret in text for secret in SECRETS)


def test_a_pass_through_has_no_rerank_fields_and_the_relays_cluster_time():
    request = incoming("PUT", b"/idx/_doc/1", [(b"X-Request-Id", b"req-\xc3\xa9-1")], body_size=11)
    request.upstream_s = 0.002
    fields = orjson.loads(request_record(request, 201, 150, None, None).line())
    assert (fields["request_id"], fields["upstream_ms"], fields["bytes_in"]) == ("req-é-1", 2.0, 11)
    assert [fields[k] for k in ("queue_ms", "model_ms", "rerank_status", "rerank_reason", "variant")] == [None] * 5


def test_a_skipped_search_passed_through_adds_the_relays_time_to_the_rewritten_requests():
    request = incoming("POST", b"/idx/_search", [])
    request.upstream_s = 0.003  # the client's request, relayed after the rewritten one's answer could not be read
    facts = SearchFacts(upstream_s=0.001)
    facts.decided(("fallback; reason=unparseable",), "v1")
    fields = orjson.loads(request_record(request, 200, 5, None, facts).line())
    assert (fields["upstream_ms"], fields["rerank_status"], fields["rerank_reason"], fields["variant"]) == (
        4.0, "fallback", "unparseable", "v1")


def test_an_msearch_lists_its_items_in_order():
    facts = SearchFacts()
    facts.decided(("reranked", "skipped; reason=sort", "partial; reranked=3"), "control")
    facts.scored(ScoreTiming(queue_s=0.001, model_s=0.01, model_started=1.0, model_ended=1.01))
    facts.scored(ScoreTiming(queue_s=0.002, model_s=0.02, model_started=1.0, model_ended=1.02))
    facts.scored(ScoreTiming())  # answered from the score cache: no queue, no model
    fields = orjson.loads(request_record(incoming("POST", b"/_msearch", []), 200, 9, None, facts).line())
    assert (fields["rerank_status"], fields["rerank_reason"]) == ("reranked,skipped,partial", ",sort,")
    assert (fields["queue_ms"], fields["model_ms"], fields["index"], fields["path"]) == (3.0, 30.0, None, "/_msearch")


def test_a_request_that_could_not_be_parsed_is_a_line_without_a_path():
    fields = orjson.loads(request_record(None, 400, 88, None, None).line())
    assert (fields["method"], fields["path"], fields["status"], fields["bytes_out"]) == (None, None, 400, 88)


def test_long_client_values_are_cut():
    fields = orjson.loads(request_record(incoming("GET", b"/" + b"i" * 1000 + b"/_count", [
        (b"X-Opaque-Id", b"o" * 1000)]), 200, 0, None, None).line())
    assert len(fields["index"]) == len(fields["opaque_id"]) == 257


# ---- sampling ------------------------------------------------------------------------------------------------


class Draws:
    def __init__(self, *values: float):
        self.values, self.calls = list(values), 0

    def __call__(self) -> float:
        self.calls += 1
        return self.values.pop(0)


def sampler(draws: Draws, **options) -> AccessLog:
    return AccessLog(AccessLogOptions(**options), rng=draws)


def fell_back() -> SearchFacts:
    facts = SearchFacts()
    facts.decided(("fallback; reason=deadline",), "control")
    return facts


def test_a_share_of_requests_is_drawn():
    draws = Draws(0.1, 0.3, 0.29, 0.99)
    log = sampler(draws, sample=0.3)
    assert [log.wants(200, None, None) for _ in range(4)] == [True, False, True, False]


def test_everything_or_nothing_draws_nothing():
    draws = Draws()
    assert sampler(draws, sample=1.0).wants(200, None, None)
    assert not sampler(draws, sample=0.0).wants(200, None, None)
    assert draws.calls == 0


@pytest.mark.parametrize(("status", "error", "facts"), [
    (500, None, None), (502, "unavailable", None), (200, "broken", None), (499, "client-closed", None),
    (200, None, "fallback"),
])
def test_errors_are_logged_whatever_the_sample(status, error, facts):
    draws = Draws(0.99)
    facts = fell_back() if facts else None
    assert sampler(draws, sample=0.0).wants(status, error, facts)
    assert not sampler(draws, sample=0.0, always_log_errors=False).wants(status, error, facts)
    assert sampler(Draws(0.99), sample=0.5, always_log_errors=False).wants(status, error, facts) is False


def test_a_client_error_is_no_error_of_the_proxy():
    assert not sampler(Draws(0.5), sample=0.1).wants(404, None, None)


# ---- the writer ----------------------------------------------------------------------------------------------


def test_lines_go_to_the_file_through_the_logger(tmp_path: Path):
    path = tmp_path / "access.jsonl"
    log = AccessLog(AccessLogOptions(enabled=True, destination=str(path)))
    log.install()
    try:
        assert logging.getLogger("rerank_proxy.access").propagate is False
        for n in range(600):  # past a batch: written in several
            log.write(request_record(incoming("GET", f"/idx/_doc/{n}".encode(), []), 200, n, None, None))
        log.sync()
        lines = path.read_bytes().splitlines()
        assert [orjson.loads(line)["bytes_out"] for line in lines] == list(range(600))
        log.write(request_record(incoming("GET", b"/idx/_doc/last", []), 200, 600, None, None))
    finally:
        log.close()  # writes what is left
    assert len(path.read_bytes().splitlines()) == 601
    assert log._handler not in logging.getLogger("rerank_proxy.access").handlers


def test_a_handler_of_any_format_gets_the_line(tmp_path: Path):
    log = AccessLog(AccessLogOptions(enabled=True, destination=str(tmp_path / "access.jsonl")))
    seen: list[str] = []

    class Formatted(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(self.format(record))

    other = Formatted()
    other.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d %(message)s"))
    logger = logging.getLogger("rerank_proxy.access")
    logger.addHandler(other)
    log.install()
    try:
        log.write(request_record(incoming("GET", b"/idx/_doc/hunter2", [(b"Cookie", b"session=abcdef")]), 200, 1,
                                 None, None))
    finally:
        logger.removeHandler(other)
        log.close()
    [text] = seen
    assert " INFO rerank_proxy.access access_log.py:0 {" in text
    assert orjson.loads(text[text.index("{"):])["path"] == "/{index}/_doc/{id}"
    assert not any(secret in text for secret in SECRETS)


def test_lines_are_written_whole_a_few_kilobytes_at_a_time():
    written: list[str] = []

    class Target(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            written.append(record.getMessage())

    handler = access_log._Batches(Target(), limit=1000)
    lines = [f'{{"n":{n},"pad":"{"x" * (300 + n)}"}}' for n in range(40)]
    for line in lines:
        handler.handle(logging.LogRecord("x", logging.INFO, "", 0, line, None, None))
    handler._write()
    assert len(written) > 1 and all(len(chunk) <= access_log._CHUNK_CHARS for chunk in written)
    assert "\n".join(written).split("\n") == lines
    assert handler.written == handler.handed == 40


def test_a_disabled_log_opens_nothing(tmp_path: Path):
    log = AccessLog(AccessLogOptions(enabled=False, destination=str(tmp_path / "never.log")))
    log.install()
    log.close()
    assert not (tmp_path / "never.log").exists()


def test_a_destination_that_cannot_be_opened_refuses_the_config(tmp_path: Path):
    with pytest.raises(ConfigError, match="access_log.destination: cannot open"):
        AccessLog(AccessLogOptions(enabled=True, destination=str(tmp_path / "missing" / "access.log")))


def test_a_line_that_finds_the_writer_too_far_behind_is_dropped_and_counted():
    def dropped() -> float:
        return REGISTRY.get_sample_value("rerank_proxy_access_log_dropped_total") or 0.0

    before = dropped()
    handler = access_log._Batches(logging.NullHandler(), limit=1)  # its writer not started: nothing drains it
    for n in range(3):
        handler.handle(logging.LogRecord("x", logging.INFO, "", 0, f"line {n}", None, None))
    assert dropped() == before + 2 and [r.getMessage() for r in handler.lines] == ["line 0"]


def test_the_options_are_validated():
    with pytest.raises(ConfigError, match="access_log.sample"):
        parse_config({"models": {"m": {"backend": "bi-encoder", "source": "x"}}, "access_log": {"sample": 1.5}})
    with pytest.raises(ConfigError, match="access_log.format: Extra inputs"):
        parse_config({"models": {"m": {"backend": "bi-encoder", "source": "x"}}, "access_log": {"format": "text"}})
    config = parse_config({"models": {"m": {"backend": "bi-encoder", "source": "x"}}})
    assert config.access_log == AccessLogOptions(enabled=False, sample=1.0, always_log_errors=True,
                                                 destination="stderr")


@pytest.mark.parametrize(("err", "kind"), [
    (UpstreamError("reset"), "broken"), (UpstreamUnavailable("refused"), "unavailable"),
    (UpstreamTimeout("slow"), "timeout"),
])
def test_an_upstream_failure_has_one_kind_for_the_metric_and_the_log(err: UpstreamError, kind: str) -> None:
    def count() -> float:
        return REGISTRY.get_sample_value("rerank_proxy_upstream_errors_total", {"kind": kind}) or 0.0

    before = count()
    ProxyServer.record_upstream_error(err)
    assert err.kind == kind and count() == before + 1
