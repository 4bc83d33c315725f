"""Interleaved experiments through the real proxy in front of real clusters: a search in an experiment is served
one merged page of BM25's and the model's rankings, its pages agree, click events on the data port are attributed
to the side that placed the document, and the verdict shows on the admin listener and in the metrics."""
from __future__ import annotations

import orjson
import pytest

from tests.integration.conftest import WINDOW, proxy_config, raw
from tests.proxyrunner import RunningProxy

pytestmark = pytest.mark.integration

EXPERIMENT = "bm25-vs-minilm"
QUERY = {"query": {"match": {"text": "vitamin D deficiency and bone density"}}, "size": WINDOW}


@pytest.fixture(scope="module", params=["elasticsearch", "opensearch"])
def live(request):
    url = request.getfixturevalue("scifact_es" if request.param == "elasticsearch" else "scifact_os")
    experiments = {EXPERIMENT: {"a": "no-rerank", "b": "control", "indices": ["scifact"]}}
    with RunningProxy(proxy_config(url, experiments=experiments, events={"listener": "data"})) as running:
        yield url, running


def search(url, body=QUERY, **headers):
    reply = raw("POST", f"{url}/scifact/_search", orjson.dumps(body), headers)
    assert reply.status == 200, reply.body
    return reply, [hit["_id"] for hit in orjson.loads(reply.body)["hits"]["hits"]]


def test_a_search_in_the_experiment_is_served_the_merged_list_of_both_rankings(live):
    direct, running = live
    reply, served = search(running.url, **{"X-Opaque-Id": "user-1"})
    assert reply.headers["X-Rerank-Status"] == "interleaved"
    assert reply.headers["X-Rerank-Experiment"] == EXPERIMENT and reply.headers["X-Rerank-Search-Id"]
    _, bm25 = search(direct)
    _, reranked = search(running.url, **{"X-Rerank-Variant": "control"})
    assert bm25 != reranked, "the two sides must differ for the merge to show"
    assert len(served) == len(set(served)) == WINDOW and set(served) <= set(bm25) | set(reranked)
    assert set(served[:2]) == {bm25[0], reranked[0]} or bm25[0] == reranked[0] == served[0]


def test_pages_of_one_query_in_one_session_are_slices_of_one_merged_list(live):
    _, running = live
    _, whole = search(running.url, **{"X-Opaque-Id": "user-2"})
    _, page = search(running.url, {**QUERY, "from": 5, "size": 5}, **{"X-Opaque-Id": "user-2"})
    assert page == whole[5:10]


def test_a_variant_asked_for_by_header_is_not_interleaved(live):
    _, running = live
    reply, _ = search(running.url, **{"X-Rerank-Variant": "no-rerank"})
    assert reply.headers["X-Rerank-Status"] == "skipped; reason=disabled" and "X-Rerank-Search-Id" not in reply.headers


def test_clicks_sent_as_a_beacon_to_the_data_port_decide_searches_and_show_in_the_verdict(live):
    _, running = live
    before = orjson.loads(raw("GET", f"{running.admin_url}/_rerank_proxy/experiments").body)
    before = before["experiments"][EXPERIMENT]
    reply, served = search(running.url, **{"X-Opaque-Id": "user-3"})
    sid = reply.headers["X-Rerank-Search-Id"]
    beacon = orjson.dumps({"search_id": sid, "doc_id": served[0], "type": "click"})
    answer = raw("POST", f"{running.url}/_rerank_proxy/events", beacon, {"Content-Type": "text/plain"})
    assert answer.status == 200 and orjson.loads(answer.body)["attributed"] == 1
    after = orjson.loads(raw("GET", f"{running.admin_url}/_rerank_proxy/experiments").body)["experiments"]
    counts = after[EXPERIMENT]
    assert counts["searches"] >= before["searches"] + 1
    assert counts["clicked_searches"] == before["clicked_searches"] + 1
    assert counts["wins_a"] + counts["wins_b"] == before["wins_a"] + before["wins_b"] + 1
    metrics = raw("GET", f"{running.admin_url}/_rerank_proxy/metrics").body.decode()
    assert f'rerank_proxy_experiment_clicked_searches{{experiment="{EXPERIMENT}"}}' in metrics


def test_an_ndjson_batch_on_the_admin_listener_is_taken_whole_or_refused_whole(live):
    _, running = live
    reply, served = search(running.url, **{"X-Opaque-Id": "user-4"})
    sid = reply.headers["X-Rerank-Search-Id"]
    good = b"\n".join(orjson.dumps({"search_id": sid, "doc_id": d}) for d in served[:3])
    bad = raw("POST", f"{running.admin_url}/_rerank_proxy/events", good + b"\n{broken")
    assert bad.status == 400 and b"rerank_proxy_events_exception" in bad.body
    ok = raw("POST", f"{running.admin_url}/_rerank_proxy/events", good, {"Content-Type": "application/x-ndjson"})
    assert orjson.loads(ok.body) == {"accepted": 3, "attributed": 3, "unknown_search": 0, "not_served": 0,
                                     "not_credited": 0}


def test_the_verdict_is_not_served_on_the_data_port(live):
    direct, running = live
    through = raw("GET", f"{running.url}/_rerank_proxy/experiments")
    assert through.status == raw("GET", f"{direct}/_rerank_proxy/experiments").status
    assert b"served_searches" not in through.body
