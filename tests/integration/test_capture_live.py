"""Capture and shadow scoring through the real proxy in front of real clusters: a reranked search's record holds
the window the cluster returned and the order served, never a header or credential; a shadow model's agreement and
a click on the search join it by search id."""
from __future__ import annotations

import json

import orjson
import pytest
import yaml

from proxy import cli
from tests.beir import data_root
from tests.integration.conftest import WINDOW, proxy_config, raw
from tests.proxyrunner import MINILM, RunningProxy

pytestmark = pytest.mark.integration

SECRET = "Basic c2VjcmV0LXVzZXI6aHVudGVyMg=="  # never in a capture
QUERY = "vitamin D deficiency and bone density"


@pytest.fixture(scope="module", params=["elasticsearch", "opensearch"])
def captured(request, tmp_path_factory):
    url = request.getfixturevalue("scifact_es" if request.param == "elasticsearch" else "scifact_os")
    path = tmp_path_factory.mktemp("capture") / "capture.jsonl"
    config = proxy_config(url, capture={"path": str(path), "sample": 1.0})
    config["models"]["shadow-minilm"] = MINILM
    config["indices"][0]["shadow"] = {"model": "shadow-minilm", "sample": 1.0}
    with RunningProxy(config) as running:
        yield url, running, path


def records(running, path):
    running.run(running.server.state.shadows.close_when_idle())
    running.server.state.capture.sync()
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_a_captured_search_records_the_clusters_window_and_the_served_order(captured):
    direct, running, path = captured
    body = orjson.dumps({"query": {"match": {"text": QUERY}}, "size": 5})
    reply = raw("POST", f"{running.url}/scifact/_search", body, {"Authorization": SECRET, "X-Opaque-Id": "op-1"})
    assert reply.status == 200 and reply.headers["X-Rerank-Status"] == "reranked"
    search_id = reply.headers["X-Rerank-Search-Id"]
    served_ids = [hit["_id"] for hit in orjson.loads(reply.body)["hits"]["hits"]]
    window = orjson.dumps({"query": {"match": {"text": QUERY}}, "size": WINDOW, "_source": False})
    cluster_ids = [hit["_id"] for hit in orjson.loads(raw("POST", f"{direct}/scifact/_search", window).body)
                   ["hits"]["hits"]]
    click = orjson.dumps({"search_id": search_id, "doc_id": served_ids[0]})
    assert raw("POST", f"{running.admin_url}/_rerank_proxy/events", click).status == 200

    mine = [r for r in records(running, path) if r["search_id"] == search_id]
    search = next(r for r in mine if r["type"] == "search")
    assert search["query"] == QUERY and search["index"] == "scifact" and search["status"] == "reranked"
    assert [hit["id"] for hit in search["window"]] == cluster_ids
    assert [search["window"][i]["id"] for i in search["served"][:5]] == served_ids
    shadow = next(r for r in mine if r["type"] == "shadow")
    assert shadow["model"] == "shadow-minilm" and shadow["agreement"]["kendall_tau"] == pytest.approx(1.0)
    assert next(r for r in mine if r["type"] == "event")["doc_id"] == served_ids[0]


def test_no_header_or_credential_is_ever_captured(captured):
    _, running, path = captured
    body = orjson.dumps({"query": {"match": {"text": "cancer cells"}}})
    raw("POST", f"{running.url}/scifact/_search", body, {"Authorization": SECRET, "X-Opaque-Id": "op-secret"})
    records(running, path)
    text = path.read_bytes()
    assert SECRET.encode() not in text and b"c2VjcmV0" not in text and b"op-secret" not in text
    assert b"Authorization" not in text and b"authorization" not in text


def test_shadow_agreement_and_capture_counts_show_in_the_metrics(captured):
    _, running, path = captured
    raw("POST", f"{running.url}/scifact/_search", orjson.dumps({"query": {"match": {"text": QUERY}}}))
    records(running, path)
    metrics = raw("GET", f"{running.admin_url}/_rerank_proxy/metrics").body.decode()
    assert 'rerank_proxy_shadow_searches_total{model="shadow-minilm",result="scored"}' in metrics
    assert 'rerank_proxy_shadow_agreement_count{measure="kendall_tau",model="shadow-minilm"}' in metrics
    assert 'rerank_proxy_capture_records_total{result="queued",type="search"}' in metrics


def test_replay_with_the_served_config_reproduces_every_served_order(captured, tmp_path):
    direct, running, path = captured
    for query in ("cancer cells", "smoking and lung disease", QUERY):
        raw("POST", f"{running.url}/scifact/_search", orjson.dumps({"query": {"match": {"text": query}}}))
    records(running, path)
    served_config = tmp_path / "served.yaml"
    served_config.write_text(yaml.safe_dump(proxy_config(direct)))
    out = tmp_path / "replay.json"
    assert cli.main(["replay", str(path), "--config", str(served_config), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["summary"]["searches"] >= 3 and report["summary"]["statuses"]["fallback"] == 0
    assert all(s["kendall_tau"] == pytest.approx(1.0) and s["overlap_at_10"] == 1.0 for s in report["searches"])


def test_replay_of_a_candidate_reports_its_change_clicks_and_judged_quality(captured, tmp_path):
    direct, running, path = captured
    records(running, path)
    candidate = proxy_config(direct)
    candidate["indices"][0]["text"] = {"fields": ["title"], "max_tokens": 32}  # reads far less: orders change
    candidate_path = tmp_path / "candidate.yaml"
    candidate_path.write_text(yaml.safe_dump(candidate))
    out = tmp_path / "replay.json"
    scifact = data_root() / "scifact"
    args = ["replay", str(path), "--config", str(candidate_path), "--json", str(out),
            "--qrels", str(scifact / "qrels" / "test.tsv"), "--queries", str(scifact / "queries.jsonl")]
    assert cli.main(args) == 0
    summary = json.loads(out.read_text())["summary"]
    assert summary["agreement"]["kendall_tau"] < 1.0
    assert summary["preference"]["clicked_searches"] >= 1  # the click of the first test joined its search
    assert summary["latency_ms"]["p50"] > 0
