"""Restarts lose nothing: `rerank-proxy serve` opens its port before its models have loaded (their searches are
served in the cluster's order meanwhile), finishes the requests in flight on SIGTERM before it exits 0, exits at once
on a second one, and picks up a model fixed on disk while it runs.

Requests are held in flight by Toxiproxy's latency between the proxy and the real cluster; nothing sleeps to wait
for a state: each test polls the proxy's own endpoints or log."""
from __future__ import annotations

import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from rerank.loading import resolve_source
from rerank_proxy_tools.models import make_tiny_cross_encoder
from tests.infinity import InfinityServer
from tests.integration.conftest import Raw, proxy_config, raw
from tests.proxyrunner import MINILM
from tests.serveprocess import Serve
from tests.toxiproxy import Toxiproxy, running_toxiproxy

LATENCY_MS = 1500  # how long each request stays in flight: long enough to signal while it is, short for CI
SEARCH = orjson.dumps({"query": {"match": {"title": "vitamin D bone"}}})


@pytest.fixture(scope="module")
def toxiproxy() -> Iterator[Toxiproxy]:
    with running_toxiproxy() as server:
        yield server


def _address(url: str) -> str:
    return url.removeprefix("http://")


@contextmanager
def _slowed(toxiproxy: Toxiproxy, name: str, url: str, latency_ms: int) -> Iterator[str]:
    """The URL of a Toxiproxy link to `url` that delays every answer by `latency_ms`; removed afterwards."""
    link = toxiproxy.create(name, _address(url))
    try:
        link.add_toxic("latency", latency=latency_ms)
        yield link.url
    finally:
        link.delete()


def _config(tmp_path: Path, **extra: Any) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(proxy_config("http://127.0.0.1:9", **extra)))
    return path


def _requests_seen(serve: Serve) -> float:
    text = raw("GET", f"{serve.admin_url}/_rerank_proxy/metrics").body.decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("rerank_proxy_requests_total{"))


def _in_flight(serve: Serve, calls: list[tuple[str, str, bytes | None]]) -> tuple[list[Raw | Exception], list[threading.Thread]]:
    """Starts `calls` concurrently and returns once the proxy has received every one of them."""
    results: list[Raw | Exception] = [RuntimeError("no answer")] * len(calls)
    before = _requests_seen(serve)

    def call(i: int, method: str, path: str, body: bytes | None) -> None:
        try:
            results[i] = raw(method, f"{serve.url}{path}", body)
        except Exception as err:  # noqa: BLE001 - the test reports what each client saw
            results[i] = err

    threads = [threading.Thread(target=call, args=(i, *c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    serve.wait_for(lambda: _requests_seen(serve) >= before + len(calls), 30)
    return results, threads


CALLS = [("GET", "/scifact/_doc/4983", None)] * 4 + [("POST", "/scifact/_search", SEARCH)] * 4


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def test_sigterm_lets_requests_in_flight_finish_then_exits_0(scifact_es, toxiproxy, tmp_path):
    with _slowed(toxiproxy, "restart-sigterm", scifact_es, LATENCY_MS) as slow, \
            Serve(_config(tmp_path), slow) as serve:
        results, threads = _in_flight(serve, CALLS)
        serve.process.send_signal(signal.SIGTERM)
        serve.wait_for_log("shutting down")
        assert _refuses_connections(serve.port)  # no new connection is accepted meanwhile
        for thread in threads:
            thread.join(30)
        assert serve.process.wait(30) == 0
    assert [getattr(r, "status", r) for r in results] == [200] * len(CALLS)
    assert all(r.headers["X-Rerank-Status"] == "reranked" for r in results[4:])  # type: ignore[union-attr]


def test_idle_keep_alive_connections_do_not_hold_the_exit(scifact_es, tmp_path):
    with Serve(_config(tmp_path, shutdown_grace_s=120), scifact_es) as serve:
        idle = socket.create_connection(("127.0.0.1", serve.port))
        idle.sendall(b"GET /scifact/_doc/4983 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")
        serve.process.send_signal(signal.SIGTERM)
        assert serve.process.wait(20) == 0  # well before the 120 s grace
        assert idle.recv(65536) == b""  # the proxy closed it
        idle.close()


def test_requests_past_the_grace_period_are_cut_and_the_exit_is_still_0(scifact_es, toxiproxy, tmp_path):
    with _slowed(toxiproxy, "restart-grace", scifact_es, 60_000) as frozen, \
            Serve(_config(tmp_path, shutdown_grace_s=1), frozen) as serve:
        results, threads = _in_flight(serve, CALLS[:2])
        serve.process.send_signal(signal.SIGTERM)
        assert serve.process.wait(20) == 0
        serve.wait_for_log("still busy after 1s were closed")
        for thread in threads:
            thread.join(10)
    assert all(isinstance(r, Exception) for r in results)  # the connection was closed, not answered wrongly


def test_a_second_sigterm_exits_at_once(scifact_es, toxiproxy, tmp_path):
    with _slowed(toxiproxy, "restart-twice", scifact_es, 60_000) as frozen, \
            Serve(_config(tmp_path, shutdown_grace_s=120), frozen) as serve:
        _results, threads = _in_flight(serve, CALLS[:2])
        serve.process.send_signal(signal.SIGTERM)
        serve.wait_for_log("shutting down")
        serve.process.send_signal(signal.SIGTERM)
        assert serve.process.wait(10) == 1
        for thread in threads:
            thread.join(10)


def test_the_port_opens_before_a_slow_model_loads_and_serves_in_cluster_order(scifact_es, toxiproxy, tmp_path):
    """The model is a real reranking service (Infinity) reached through Toxiproxy's latency, so its load (the
    warm-up call) takes as long as the test says."""
    service = InfinityServer(make_tiny_cross_encoder(tmp_path / "tiny-ce"), served_model_name="tiny")
    service.start()
    try:
        with _slowed(toxiproxy, "restart-slow-model", service.url, 4000) as slow:
            remote = {"backend": "remote", "source": slow, "remote_model": "tiny", "timeout_s": 60, "retries": 0}
            with Serve(_config(tmp_path, models={"slow": remote}), scifact_es, wait_ready=False) as serve:
                first = raw("POST", f"{serve.url}/scifact/_search", SEARCH)
                assert first.status == 200
                assert first.headers["X-Rerank-Status"] == "fallback; reason=model-loading"
                assert _ids(first) == _ids(raw("POST", f"{scifact_es}/scifact/_search", SEARCH))
                ready = raw("GET", f"{serve.admin_url}/_rerank_proxy/ready")
                assert ready.status == 503 and orjson.loads(ready.body)["models"] == {"slow": "loading"}
                assert raw("GET", f"{serve.admin_url}/_rerank_proxy/live").status == 200
                serve.wait_for(lambda: raw("GET", f"{serve.admin_url}/_rerank_proxy/ready").status == 200, 120)
                assert raw("POST", f"{serve.url}/scifact/_search", SEARCH).headers["X-Rerank-Status"] == "reranked"
    finally:
        service.stop()


def _ids(answer: Raw) -> list[str]:
    return [hit["_id"] for hit in orjson.loads(answer.body)["hits"]["hits"]]


def test_a_model_fixed_on_disk_is_picked_up_while_serving(scifact_es, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()  # empty: the first loads fail
    model = {**MINILM, "source": str(folder), "load_retry_s": 0.2, "load_retry_max_s": 0.5}
    with Serve(_config(tmp_path, models={"minilm": model}), scifact_es, wait_ready=False) as serve:
        health = lambda: orjson.loads(raw("GET", f"{serve.admin_url}/_rerank_proxy/health").body)  # noqa: E731
        serve.wait_for(lambda: health()["models"]["minilm"].startswith("error:"), 60)
        failed = raw("POST", f"{serve.url}/scifact/_search", SEARCH)
        assert failed.status == 200 and failed.headers["X-Rerank-Status"] == "fallback; reason=model-loading"
        staging = tmp_path / "staging"
        shutil.copytree(resolve_source(MINILM["source"]), staging)
        staging.rename(folder)  # at once: a retry never reads a half-copied folder
        serve.wait_for(lambda: health()["models"]["minilm"] == "ready", 120)
        assert raw("POST", f"{serve.url}/scifact/_search", SEARCH).headers["X-Rerank-Status"] == "reranked"
