"""The bypass deployment: real nginx (docker/nginx/) in front of rerank-proxy and the real cluster.

Searches come back through the proxy (`X-Rerank-Status`); writes, `_bulk`, `_cat` and every other request come back
straight from the cluster: status, body and header values byte for byte what a direct client gets. nginx adds its own
`Server`, `Date` and `Connection` headers and writes `Content-Type` and `Content-Length` first, with capitals.
"""
from __future__ import annotations

import gzip
import re
import uuid
from collections.abc import Iterator

import orjson
import pytest
from prometheus_client import REGISTRY

from proxy.config import parse_config
from tests.integration.conftest import Target
from tests.nginx import Nginx, RawClient, RawResponse, nginx_binary, nginx_test
from tests.proxyrunner import MINILM

pytestmark = pytest.mark.integration

NGINX_OWN_HEADERS = {b"server", b"date", b"connection", b"keep-alive"}
JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}


class Bypass:
    """nginx in front of one cluster and the shared proxy for it, and a direct connection for comparison."""

    def __init__(self, target: Target, nginx: Nginx):
        self.target = target
        self.nginx = nginx
        self.via = RawClient(nginx.port)
        self.direct = RawClient(int(target.direct.rsplit(":", 1)[1]))


@pytest.fixture(scope="module", params=["elasticsearch", "opensearch"])
def bypass(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bypass]:
    nginx_binary()  # skip before a cluster or the proxy is started for nothing
    target: Target = request.getfixturevalue("es_target" if request.param == "elasticsearch" else "os_target")
    config = parse_config({
        "listen": target.proxy.removeprefix("http://"),
        "upstreams": [target.direct],
        "models": {"minilm": MINILM},
    })
    with Nginx(tmp_path_factory.mktemp(f"nginx-{request.param}"), config) as nginx:
        bypass = Bypass(target, nginx)
        yield bypass
        bypass.via.close()
        bypass.direct.close()


def proxy_requests() -> float:
    """Requests the in-process proxies have received so far (their `rerank_proxy_requests_total`)."""
    return sum(sample.value for metric in REGISTRY.collect() for sample in metric.samples
               if sample.name == "rerank_proxy_requests_total")


def test_rendered_config_passes_nginx_t(bypass: Bypass) -> None:
    result = nginx_test(bypass.nginx.binary, bypass.nginx.conf)
    assert result.returncode == 0, result.stderr


_TEMPLATE = {"source": {"query": {"match": {"text": "{{query_string}}"}}}, "params": {"query_string": "cancer"}}


@pytest.mark.parametrize("method, target, body, headers", [
    ("POST", b"/scifact/_search", {"query": {"match": {"text": "vitamin D deficiency"}}}, JSON),
    ("GET", b"/scifact/_search?q=text:cancer", None, {}),
    ("POST", b"/scifact/_msearch", b'{}\n{"query": {"match": {"text": "cancer"}}}\n', NDJSON),
    ("POST", b"/scifact/_search/template", _TEMPLATE, JSON),
    ("POST", b"//scifact/_search/?size=3", {"query": {"match": {"text": "protein"}}}, JSON),
])
def test_searches_go_through_the_proxy(bypass: Bypass, method: str, target: bytes, body: object,
                                       headers: dict[str, str]) -> None:
    data = body if isinstance(body, bytes) else orjson.dumps(body) if body is not None else b""
    before = proxy_requests()
    response = bypass.via.request(method, target, data, headers)
    assert proxy_requests() == before + 1
    # The integ-test-zip clusters have no mustache module: a template search is the cluster's 400, relayed.
    assert response.status == bypass.direct.request(method, target, data, headers).status, response.body[:300]
    assert response.header("X-Rerank-Status") is not None, response.headers
    if target == b"/scifact/_search":
        assert response.header("X-Rerank-Status") == b"reranked"


def _bulk_body(index: str, n: int) -> bytes:
    lines = []
    for i in range(n):
        lines.append(orjson.dumps({"index": {"_index": index, "_id": str(i)}}))
        lines.append(orjson.dumps({"title": f"doc {i}", "text": "padding " * 60}))
    return b"\n".join(lines) + b"\n"


def _steps(index: str) -> list[tuple[str, bytes, bytes, dict[str, str]]]:
    """Writes, reads and cluster APIs, with one search path under a method that is no search."""
    name = index.encode()
    return [
        ("PUT", b"/" + name, orjson.dumps({"settings": {"number_of_shards": 1, "number_of_replicas": 0}}), JSON),
        ("PUT", b"/%s/_doc/1?refresh=true" % name, orjson.dumps({"title": "one", "text": "first"}), JSON),
        ("GET", b"/%s/_doc/1" % name, b"", {}),
        ("GET", b"/%s/_doc/1" % name, b"", {"Accept-Encoding": "gzip"}),
        ("POST", b"/%s/_bulk?refresh=true" % name, _bulk_body(index, 3000), NDJSON),  # ~1.5 MB, streamed
        ("GET", b"/%s/_count" % name, b"", {}),
        ("GET", b"/_cat/indices/%s?h=health,status,index,docs.count&v" % name, b"", {}),
        ("DELETE", b"/%s/_doc/.." % name, b"", {}),  # the document `..`; normalised, it would delete the index
        ("GET", b"/%s/_count" % name, b"", {}),
        ("PUT", b"/%s/_search" % name, b"{}", JSON),
        ("GET", b"/%s/_doc/%%2F" % name, b"", {}),
        ("DELETE", b"/" + name, b"", {}),
    ]


def _comparable(response: RawResponse, index: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, the cluster's headers and the body, with the index name and `took` (all that may differ) neutral."""
    body = response.body
    if response.header("Content-Encoding") == b"gzip":
        body = gzip.decompress(body)
    body = re.sub(rb'"took"\s*:\s*\d+', b'"took":0', body.replace(index.encode(), b"INDEX"))
    varies = body != response.body  # then its length and compressed bytes may vary too
    skip = NGINX_OWN_HEADERS | ({b"content-length"} if varies else set())
    # Sorted and lower-cased: nginx writes Content-Type and Content-Length itself, capitalised, first.
    headers = sorted((k.lower(), v.replace(index.encode(), b"INDEX")) for k, v in response.headers
                     if k.lower() not in skip)
    return response.status, headers, body


def test_everything_else_goes_straight_to_the_cluster(bypass: Bypass) -> None:
    # Same-length names, so lengths compare; each side writes its own index.
    direct_index, via_index = (f"bypass-{side}-{uuid.uuid4().hex[:8]}" for side in ("d", "n"))
    before = proxy_requests()
    for (method, target, body, headers), (_, via_target, via_body, _) in zip(_steps(direct_index), _steps(via_index)):
        direct = bypass.direct.request(method, target, body, headers)
        via = bypass.via.request(method, via_target, via_body, headers)
        assert not [k for k, _ in via.headers if k.lower().startswith(b"x-rerank")], (method, target)
        assert _comparable(via, via_index) == _comparable(direct, direct_index), (method, target)
    assert proxy_requests() == before  # not one of them passed through the proxy


def test_dot_segments_reach_the_cluster_unresolved(bypass: Bypass) -> None:
    index = f"bypass-dots-{uuid.uuid4().hex[:8]}"
    assert bypass.via.request("PUT", b"/" + index.encode(), b"{}", JSON).status == 200
    try:
        deleted = bypass.via.request("DELETE", b"/%s/_doc/.." % index.encode())
        assert deleted.status == 404  # the document `..` is not there; the index is
        assert bypass.direct.request("HEAD", b"/" + index.encode()).status == 200
    finally:
        bypass.direct.request("DELETE", b"/" + index.encode())
