"""A short soak (benchmarks/soak.py) through a real `rerank-proxy serve` process, against each real cluster: 50
concurrent clients for 15 s, GETs, `_bulk` writes of 5,000 documents (each written twice) and reranked searches; no
5xx or connection error, every document in the cluster as sent (`_source` checksum and `_version`), the proxy's fds
back at their start level once the clients have hung up, its RSS within the soak's bound."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks import soak
from rerank_proxy_tools import anchors
from tests.proxyrunner import MINILM

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def soak_config(upstream: str) -> dict[str, Any]:
    """Every index but the system ones reranked, cheaply: window 20, 64-piece texts, a 2 s model budget (searches past
    it fall back, which is fine under load)."""
    config: dict[str, Any] = {
        "upstreams": [upstream],
        "models": {"minilm": {**MINILM, "max_length": 128}},
        "defaults": {"window": 20, "timeout_ms": 2000, "text": {"fields": ["title", "text"], "max_tokens": 64}},
        "indices": [{"match": ".*", "enabled": False}],
        "admin": {"listen": f"127.0.0.1:{anchors.free_port()}"},  # a free port, not the default 9202
    }
    return config


def test_soak_through_a_serve_process(cluster, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(soak_config(cluster.url)))
    launched = soak.start_proxy(path, cluster.url, tmp_path, timeout_s=120,
                                command=[sys.executable, "-m", "proxy.cli"], cwd=REPO)
    try:
        report = soak.run_soak(soak.SoakOptions(
            upstream=cluster.url, proxy=launched.url, proxy_pid=launched.process.pid, duration_s=15, clients=50,
            documents=5000, writes_per_doc=2, bulk_size=250, ready_timeout_s=120,
            index=f"soak-test-{cluster.flavor}-{anchors.free_port()}",
        ))
    finally:
        launched.stop()
    table = report.table()
    print(table)
    log = launched.log.read_text(errors="replace")
    assert not report.failures, f"{table}\n\nproxy log:\n{log[-3000:]}"
    assert report.documents_compared == 5000 and report.unwritten == report.uncertain == 0, table
    assert report.missing == report.source_mismatched == report.version_mismatched == report.extra == 0, table
    assert report.read_mismatched == report.bulk_version_anomalies == report.control_mismatched == 0, table
    assert report.control_compared == 250, table
    assert report.statuses[("get", 200)] > 0 and report.statuses[("search", 200)] > 0, table
    # Every search was the proxy's to rerank: reranked, partly or not at all (a fallback, whatever its reason).
    assert all(s in ("reranked", "partial") or s.startswith("fallback;") for s in report.rerank_statuses), table
    assert report.start and report.end
    assert report.end.client_conns == 0, table
    assert report.end.unpooled_fds <= report.start.unpooled_fds + report.options.fd_slack, table
    assert report.ok, table
