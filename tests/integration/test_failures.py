"""The model failing never fails a search; the cluster failing is reported the way the cluster would."""
from __future__ import annotations

import re
import socket

import orjson
import pytest

from tests.integration.conftest import proxy_config, raw
from tests.proxyrunner import RunningProxy

pytestmark = pytest.mark.integration

BODY = orjson.dumps({"query": {"match": {"title": "vitamin D bone"}}, "size": 10})


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def ids(body: bytes) -> list[str]:
    return [h["_id"] for h in orjson.loads(body)["hits"]["hits"]]


def test_a_model_that_cannot_load_falls_back_to_the_cluster_order_and_says_why(scifact_es):
    """Until it loads (it is retried in the background), its searches are `model-loading` fallbacks."""
    config = proxy_config(scifact_es)
    config["models"] = {"broken": {"backend": "cross-encoder", "source": "/nonexistent/model"}}
    with RunningProxy(config) as proxy:
        proxied = raw("POST", f"{proxy.url}/scifact/_search", BODY)
        direct = raw("POST", f"{scifact_es}/scifact/_search", BODY)
        assert proxied.status == 200
        assert ids(proxied.body) == ids(direct.body)
        assert proxied.headers["X-Rerank-Status"] == "fallback; reason=model-loading"
        health = orjson.loads(raw("GET", f"{proxy.admin_url}/_rerank_proxy/health").body)
        assert health["status"] == "degraded" and "/nonexistent/model" in health["models"]["broken"]
        metrics = raw("GET", f"{proxy.admin_url}/_rerank_proxy/metrics").body.decode()
        assert 'rerank_proxy_fallbacks_total{index="_other",model="broken",reason="model-loading"}' in metrics


def test_a_model_error_during_scoring_falls_back(es_target):
    scorer = es_target.running.server.state.engine._workers["minilm"].scorer
    original = scorer.score_encoded  # what the engine's model thread calls for a local backend

    def boom(pairs):
        raise RuntimeError("CUDA out of memory (injected)")

    scorer.score_encoded = boom
    try:  # a query no earlier test sent, so the score cache cannot answer it
        body = orjson.dumps({"query": {"match": {"title": "injected fault bone"}}, "size": 10})
        proxied = raw("POST", f"{es_target.proxy}/scifact/_search", body)
    finally:
        scorer.score_encoded = original
    direct = raw("POST", f"{es_target.direct}/scifact/_search", body)
    assert proxied.status == 200 and ids(proxied.body) == ids(direct.body)
    assert proxied.headers["X-Rerank-Status"] == "fallback; reason=model-error"


def test_a_search_past_its_model_deadline_falls_back(scifact_es):
    config = proxy_config(scifact_es)
    config["defaults"]["timeout_ms"] = 1
    config["indices"][0]["timeout_ms"] = 1
    with RunningProxy(config) as proxy:
        proxied = raw("POST", f"{proxy.url}/scifact/_search", orjson.dumps(
            {"query": {"match": {"title": "vitamin D bone"}}, "size": 10, "from": 0}))
        assert proxied.headers["X-Rerank-Status"] == "fallback; reason=deadline"
        assert ids(proxied.body) == ids(raw("POST", f"{scifact_es}/scifact/_search", BODY).body)


def test_unreachable_cluster_is_a_502_with_an_es_style_error(scifact_es):
    with RunningProxy(proxy_config(closed_port_url())) as proxy:
        for method, path, body in (("GET", "/", None), ("POST", "/scifact/_search", BODY)):
            response = raw(method, proxy.url + path, body)
            error = orjson.loads(response.body)
            assert response.status == 502 and error["status"] == 502
            assert error["error"]["type"] == "rerank_proxy_upstream_unavailable_exception"
            assert error["error"]["root_cause"][0]["reason"] == error["error"]["reason"]


def test_a_dead_upstream_fails_over_to_the_next(scifact_es):
    config = proxy_config(closed_port_url())
    config["upstreams"].append(scifact_es)
    with RunningProxy(config) as proxy:
        for _ in range(3):
            response = raw("POST", f"{proxy.url}/scifact/_search", BODY)
            assert response.status == 200 and response.headers["X-Rerank-Status"] == "reranked"


def test_sticky_split_keeps_each_user_on_one_variant_and_echoes_it(scifact_es):
    config = proxy_config(scifact_es, ab={"sticky_header": "X-User", "weights": {"control": 1, "small": 1}})
    with RunningProxy(config) as proxy:
        seen = {}
        for user in [f"u{i}" for i in range(12)] * 2:
            response = raw("POST", f"{proxy.url}/scifact/_search", BODY, {"X-User": user})
            seen.setdefault(user, set()).add(response.headers["X-Rerank-Variant"])
        assert all(len(v) == 1 for v in seen.values())
        assert {v for s in seen.values() for v in s} == {"control", "small"}
        metrics = raw("GET", f"{proxy.admin_url}/_rerank_proxy/metrics").body.decode()
        assert 'rerank_proxy_variant_total{how="sticky",variant="small"}' in metrics


def _reloads(proxy: RunningProxy, since: dict[str, float] | None = None) -> dict[str, float]:
    """Reloads counted by result, less those in `since` (the registry is the test process's, shared by its proxies)."""
    metrics = raw("GET", f"{proxy.admin_url}/_rerank_proxy/metrics").body.decode()
    found = re.findall(r'^rerank_proxy_config_reloads_total\{result="(\w+)"\} ([\d.]+)$', metrics, re.M)
    return {result: float(value) - (since or {}).get(result, 0.0) for result, value in found}


def test_reload_applies_a_good_config_and_keeps_the_old_one_on_a_bad_one(scifact_es, tmp_path):
    import yaml

    path = tmp_path / "config.yaml"
    config = proxy_config(scifact_es)
    path.write_text(yaml.safe_dump(config))
    with RunningProxy(config, config_path=path) as proxy:
        before = _reloads(proxy)
        path.write_text(yaml.safe_dump({**config, "defaults": {"window": "many"}}))
        rejected = raw("POST", f"{proxy.admin_url}/_rerank_proxy/reload")
        assert rejected.status == 400 and b"defaults.window" in rejected.body
        assert raw("POST", f"{proxy.url}/scifact/_search", BODY).headers["X-Rerank-Status"] == "reranked"
        assert _reloads(proxy, before).get("rejected") == 1.0

        # A file that parses, refused by what the new state opens (its access log): counted once as well.
        unwritable = tmp_path / "no-such-dir" / "access.log"
        access_log = {"enabled": True, "destination": str(unwritable)}
        path.write_text(yaml.safe_dump({**config, "access_log": access_log}))
        rejected = raw("POST", f"{proxy.admin_url}/_rerank_proxy/reload")
        assert rejected.status == 400 and b"access_log.destination" in rejected.body
        assert raw("POST", f"{proxy.url}/scifact/_search", BODY).headers["X-Rerank-Status"] == "reranked"
        reloads = _reloads(proxy, before)
        assert reloads.get("rejected") == 2.0 and reloads.get("ok", 0.0) == 0.0

        config["indices"][0]["enabled"] = False
        path.write_text(yaml.safe_dump(config))
        assert raw("POST", f"{proxy.admin_url}/_rerank_proxy/reload").status == 200
        status = raw("POST", f"{proxy.url}/scifact/_search", BODY).headers["X-Rerank-Status"]
        assert status == "skipped; reason=disabled"
        reloads = _reloads(proxy, before)
        assert reloads.get("rejected") == 2.0 and reloads.get("ok") == 1.0
