"""The access log of the real proxy in front of the real clusters: a JSON line per data-port request with the
fields of what it was and how it went, and not one credential, query string, header value or body among them.

Requests carry `Authorization: Basic ...`, `Authorization: ApiKey ...`, `X-Api-Key`, a cookie, secrets in the query
string and in the body; every line written is parsed, checked field by field, and searched for each secret. Sampling
and the always-logged errors follow a config reload. A `rerank-proxy serve` process writes its lines to stdout, its
own log (at DEBUG) to stderr, and neither holds a secret.
"""
from __future__ import annotations

import base64
import logging
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.integration.conftest import proxy_config, raw
from tests.proxyrunner import RunningProxy
from tests.serveprocess import CLI, REPO, free_port

pytestmark = pytest.mark.integration

FIELDS = {
    "ts", "request_id", "opaque_id", "method", "path", "index", "status", "bytes_in", "bytes_out", "upstream_ms",
    "queue_ms", "model_ms", "rerank_status", "rerank_reason", "variant", "total_ms", "error", "trace_id",
}
PASSWORD = "hunter2-SECRET-PASSWORD"
BASIC = base64.b64encode(f"elastic:{PASSWORD}".encode()).decode()
API_KEY = "SECRET-API-KEY-0c1d2e3f"
ES_API_KEY = base64.b64encode(b"key-id:SECRET-ES-API-KEY").decode()
COOKIE = "SECRET-SESSION-COOKIE"
QUERY_SECRET = "SECRETROUTING"
BODY_SECRET = "SECRETBODYTOKEN"
DOC_SECRET = "SECRET-DOCUMENT-VALUE"
SECRETS = (PASSWORD, BASIC, API_KEY, ES_API_KEY, "SECRET-ES-API-KEY", COOKIE, QUERY_SECRET, BODY_SECRET, DOC_SECRET)
CREDENTIALS = {"Authorization": f"Basic {BASIC}", "X-Api-Key": API_KEY, "Cookie": f"sid={COOKIE}"}


class Records(logging.Handler):
    """The access logger's records as they are handed over, for waiting on (the file gets them from a thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.count += 1
            self.changed.notify_all()

    def wait(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.count >= count, 60), f"{self.count} of {count} lines"


class Logged:
    def __init__(self, running: RunningProxy, path: Path, config_path: Path, config: dict[str, Any],
                 spans: InMemorySpanExporter, records: Records):
        self.running, self.path, self.config_path, self.config = running, path, config_path, config
        self.spans, self.records = spans, records

    def lines(self, count: int, path: Path | None = None) -> list[dict[str, Any]]:
        """The log file's lines once `count` have been handed over and written, each parsed (all must parse)."""
        self.records.wait(count)
        self.running.server.state.access_log.sync()
        text = (path or self.path).read_text(encoding="utf-8")
        for secret in SECRETS:
            assert secret not in text
        return [orjson.loads(line) for line in text.splitlines()]


@pytest.fixture(params=["elasticsearch", "opensearch"])
def logged(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Logged]:
    upstream = request.getfixturevalue("scifact_es" if request.param == "elasticsearch" else "scifact_os")
    path = tmp_path / "access.jsonl"
    config = proxy_config(
        upstream,
        access_log={"enabled": True, "destination": str(path)},
        tracing={"enabled": True, "exporter": "none"},
        metrics={"index_labels": ["scifact"]},
    )
    config["models"]["broken"] = {"backend": "cross-encoder", "source": "/nonexistent/model"}
    config["variants"]["broken-model"] = {"model": "broken"}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    records = Records()
    logger = logging.getLogger("rerank_proxy.access")
    logger.addHandler(records)
    try:
        with RunningProxy(config, config_path) as running:
            spans = InMemorySpanExporter()
            running.server.state.tracing.provider.add_span_processor(SimpleSpanProcessor(spans))
            yield Logged(running, path, config_path, config, spans, records)
    finally:
        logger.removeHandler(records)


def a_doc_id(direct: str) -> str:
    found = raw("POST", f"{direct}/scifact/_search", b'{"size":1,"query":{"match":{"text":"protein"}}}')
    return orjson.loads(found.body)["hits"]["hits"][0]["_id"]


def server_span(spans: list[ReadableSpan], trace_id: str) -> ReadableSpan:
    [span] = [s for s in spans if s.kind is SpanKind.SERVER and f"{s.context.trace_id:032x}" == trace_id]
    return span


def test_every_line_is_json_with_the_requests_fields_and_no_secret(logged: Logged) -> None:
    url = logged.running.url
    direct = logged.config["upstreams"][0]
    doc_id = a_doc_id(direct)
    search = orjson.dumps({"query": {"match": {"text": f"{BODY_SECRET} protein folding in cells"}}, "size": 5})
    sorted_search = orjson.dumps({"query": {"match": {"text": BODY_SECRET}}, "sort": ["_doc"], "size": 3})
    fresh = orjson.dumps({"query": {"match": {"text": f"{BODY_SECRET} gene expression"}}, "size": 5})
    msearch = b'{"index":"scifact"}\n' + fresh + b'\n{"index":"scifact"}\n' + sorted_search + b"\n"
    scratch = f"plain-{uuid.uuid4().hex[:8]}"
    document = orjson.dumps({"title": DOC_SECRET})
    sent = [  # (method, target, body, headers, expected path, expected index)
        ("GET", f"/scifact/_doc/{doc_id}?routing={QUERY_SECRET}&pretty", None,
         {**CREDENTIALS, "X-Opaque-Id": "opaque-get"}, "/{index}/_doc/{id}", "scifact"),
        ("POST", f"/scifact/_search?request_cache=false&preference={QUERY_SECRET}", search,
         {**CREDENTIALS, "X-Opaque-Id": "opaque-search", "X-Request-Id": "req-42"}, "/{index}/_search", "scifact"),
        ("POST", "/scifact/_search", sorted_search, {"Authorization": f"ApiKey {ES_API_KEY}"}, "/{index}/_search",
         "scifact"),
        ("POST", "/_msearch", msearch, {**CREDENTIALS, "Content-Type": "application/x-ndjson"}, "/_msearch", None),
        ("PUT", f"/{scratch}/_doc/{DOC_SECRET}?refresh=true", document, CREDENTIALS, "/{index}/_doc/{id}", scratch),
        ("GET", f"/scifact/_doc/missing-{QUERY_SECRET}", None, CREDENTIALS, "/{index}/_doc/{id}", "scifact"),
        ("GET", "/_cluster/health", None, CREDENTIALS, "/_cluster/health", None),
    ]
    answers = []
    try:
        for method, target, body, headers, _, _ in sent:
            answers.append(raw(method, url + target, body, headers))
        raw("POST", f"{logged.running.admin_url}/_rerank_proxy/reload")  # the admin listener: not in the log
    finally:
        raw("DELETE", f"{direct}/{scratch}")
    lines = logged.lines(len(sent))
    assert len(lines) == len(sent)

    spans = logged.spans.get_finished_spans()
    for line, (method, _, body, headers, path, index), answer in zip(lines, sent, answers):
        assert set(line) == FIELDS
        assert (line["method"], line["path"], line["index"], line["status"]) == (method, path, index, answer.status)
        assert line["bytes_in"] == len(body or b"") and line["bytes_out"] == len(answer.body)
        assert line["opaque_id"] == headers.get("X-Opaque-Id")
        assert line["upstream_ms"] > 0 and line["total_ms"] >= line["upstream_ms"] and line["error"] is None
        assert line["ts"].endswith("Z") and line["request_id"]
        assert server_span(spans, line["trace_id"]).name == f"{method} {path}"

    get, search_line, skipped, multi, put, missing, health = lines
    assert [answer.status for answer in answers] == [200, 200, 200, 200, 201, 404, 200]
    assert search_line["request_id"] == "req-42" and len(get["request_id"]) == 16
    for passed in (get, put, missing, health):
        assert [passed[k] for k in ("rerank_status", "rerank_reason", "variant", "queue_ms", "model_ms")] == [None] * 5
    assert (search_line["rerank_status"], search_line["rerank_reason"], search_line["variant"]) == (
        "reranked", None, "control")
    assert answers[1].headers["X-Rerank-Status"] == "reranked"
    assert search_line["queue_ms"] >= 0 and search_line["model_ms"] > 0
    assert search_line["total_ms"] >= search_line["upstream_ms"] + search_line["model_ms"]
    assert (skipped["rerank_status"], skipped["rerank_reason"], skipped["model_ms"]) == ("skipped", "sort", None)
    assert (multi["rerank_status"], multi["rerank_reason"]) == ("reranked,skipped", ",sort")
    assert multi["model_ms"] > 0 and multi["queue_ms"] >= 0


def test_a_reload_applies_sampling_with_errors_always_logged(logged: Logged, tmp_path: Path) -> None:
    url = logged.running.url
    quiet = tmp_path / "errors-only.jsonl"
    logged.config["access_log"] = {"enabled": True, "sample": 0.0, "always_log_errors": True,
                                   "destination": str(quiet)}
    logged.config_path.write_text(yaml.safe_dump(logged.config, sort_keys=False))
    assert raw("POST", f"{logged.running.admin_url}/_rerank_proxy/reload").status == 200
    handed_over = logged.records.count
    search = orjson.dumps({"query": {"match": {"text": f"{BODY_SECRET} vitamin deficiency"}}, "size": 3})
    for _ in range(3):
        assert raw("GET", f"{url}/_cluster/health", None, CREDENTIALS).status == 200
    assert raw("POST", f"{url}/scifact/_search", search, CREDENTIALS).headers["X-Rerank-Status"] == "reranked"
    assert raw("GET", f"{url}/scifact/_doc/nope", None, CREDENTIALS).status == 404  # the client's error: sampled
    fell_back = raw("POST", f"{url}/scifact/_search", search, {**CREDENTIALS, "X-Rerank-Variant": "broken-model"})
    assert fell_back.headers["X-Rerank-Status"] == "fallback; reason=model-loading"
    # Sent last, so when its line is handed over every line before it would have been too.
    [line] = logged.lines(handed_over + 1, quiet)
    assert (line["rerank_status"], line["rerank_reason"], line["variant"]) == ("fallback", "model-loading",
                                                                               "broken-model")
    assert logged.records.count == handed_over + 1
    assert not any(orjson.loads(old)["path"] == "/_cluster/health" for old in logged.path.read_text().splitlines())


def test_the_served_process_writes_lines_to_stdout_and_no_secret_anywhere(scifact_es: str, tmp_path: Path) -> None:
    config = proxy_config(scifact_es, access_log={"enabled": True, "destination": "stdout"})
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    args = [*CLI, "--log-level", "DEBUG", "serve", "--config", str(config_path), "--listen", f"127.0.0.1:{port}",
            "--admin-listen", f"127.0.0.1:{free_port()}"]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out: list[bytes] = []
    err: list[bytes] = []
    changed = threading.Condition()

    def read(stream: Any, into: list[bytes]) -> None:
        for line in stream:
            with changed:
                into.append(line)
                changed.notify_all()

    readers = [threading.Thread(target=read, args=(process.stdout, out), daemon=True),
               threading.Thread(target=read, args=(process.stderr, err), daemon=True)]
    for reader in readers:
        reader.start()

    def wait_for(condition: Any) -> None:
        with changed:
            assert changed.wait_for(lambda: condition() or process.poll() is not None, 120), b"".join(err)
            assert process.poll() is None, b"".join(err)

    try:
        wait_for(lambda: any(b"model minilm loaded" in line for line in err))
        url = f"http://127.0.0.1:{port}"
        search = orjson.dumps({"query": {"match": {"text": f"{BODY_SECRET} protein"}}, "size": 5})
        answers = [
            raw("POST", f"{url}/scifact/_search?preference={QUERY_SECRET}", search, CREDENTIALS),
            raw("GET", f"{url}/scifact/_count?q={QUERY_SECRET}", None, {"Authorization": f"ApiKey {ES_API_KEY}"}),
        ]
        assert [a.status for a in answers] == [200, 200]
        wait_for(lambda: len(out) >= len(answers))
    finally:
        process.terminate()
        process.wait(30)
    for reader in readers:
        reader.join(10)
    lines = [orjson.loads(line) for line in out]
    assert [(line["path"], line["status"]) for line in lines] == [("/{index}/_search", 200), ("/{index}/_count", 200)]
    assert all(set(line) == FIELDS for line in lines) and lines[0]["rerank_status"] == "reranked"
    logs = b"".join(out + err).decode(errors="replace")
    for secret in SECRETS:
        assert secret not in logs
    assert not any(line.lstrip().startswith(b"{") for line in err)  # the access log is not in the application log
