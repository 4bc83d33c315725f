"""One proxy per real cluster, shared by the integration tests, and the clients pointed at both."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
import urllib3

from tests.proxyrunner import MINILM, RunningProxy

WINDOW = 20


def proxy_config(upstream: str, **extra: Any) -> dict[str, Any]:
    return {
        "upstreams": [upstream],
        "models": {"minilm": MINILM},
        # A generous deadline: these tests check order, not speed, on a shared 2-core machine.
        "defaults": {"window": WINDOW, "text": {"max_tokens": 256}, "fusion": {"mode": "replace"}, "timeout_ms": 120_000},
        "indices": [
            {"match": "scifact", "text": {"fields": ["title", "text"], "max_tokens": 256}},
            {"match": "plain-*", "enabled": False},
            {"match": ".*", "enabled": False},
        ],
        "variants": {
            "small": {"window": 5},
            "no-rerank": {"enabled": False},
            "fused": {"fusion": {"mode": "linear", "weight": 0.5}},
        },
        **extra,
    }


@dataclass
class Target:
    """A cluster and the proxy in front of it."""

    flavor: str
    direct: str
    proxy: str
    running: RunningProxy

    def client(self, url: str, **kwargs: Any) -> Any:
        if self.flavor == "elasticsearch":
            from elasticsearch import Elasticsearch

            return Elasticsearch(url, request_timeout=60, **kwargs)
        from opensearchpy import OpenSearch

        return OpenSearch([url], timeout=60, **kwargs)

    def search(self, url: str, *, headers: dict[str, str] | None = None, params: dict[str, Any] | None = None,
               **body: Any) -> Any:
        """A search with the flavour's official client: the body as the request body, `params` as URL parameters."""
        client = self.client(url)
        if self.flavor == "elasticsearch":
            client = client.options(headers=headers) if headers else client
            return client.perform_request("POST", "/scifact/_search", params=params, body=body,
                                          headers={"content-type": "application/json", "accept": "application/json"})
        return client.transport.perform_request("POST", "/scifact/_search", params={**(params or {})}, body=body,
                                                headers=headers)

    def async_client(self, url: str, **kwargs: Any) -> Any:
        if self.flavor == "elasticsearch":
            from elasticsearch import AsyncElasticsearch

            return AsyncElasticsearch(url, request_timeout=60, **kwargs)
        from opensearchpy import AsyncOpenSearch

        return AsyncOpenSearch([url], timeout=60, **kwargs)


@pytest.fixture(scope="session")
def es_target(scifact_es: str):
    with RunningProxy(proxy_config(scifact_es)) as running:
        yield Target("elasticsearch", scifact_es, running.url, running)


@pytest.fixture(scope="session")
def os_target(scifact_os: str):
    with RunningProxy(proxy_config(scifact_os)) as running:
        yield Target("opensearch", scifact_os, running.url, running)


@pytest.fixture(params=["elasticsearch", "opensearch"])
def target(request: pytest.FixtureRequest) -> Target:
    return request.getfixturevalue("es_target" if request.param == "elasticsearch" else "os_target")


_HTTP = urllib3.PoolManager(retries=False)


@dataclass
class Raw:
    status: int
    headers: Any  # case-insensitive, as HTTP headers are
    body: bytes


def raw(method: str, url: str, body: bytes | str | None = None, headers: dict[str, str] | None = None) -> Raw:
    """A request with no client library in between: the bytes exactly as the server sent them."""
    if isinstance(body, str):
        body = body.encode()
    headers = {"Content-Type": "application/json", **(headers or {})} if body is not None else dict(headers or {})
    response = _HTTP.request(method, url, body=body, headers=headers, decode_content=False, preload_content=True)
    return Raw(response.status, response.headers, response.data)


def without_took(body: bytes) -> bytes:
    """`took` is the only field two identical requests legitimately differ in."""
    return re.sub(rb'"took"\s*:\s*\d+', b'"took":0', body)
