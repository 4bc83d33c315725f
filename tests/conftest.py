"""Shared fixtures: real Elasticsearch/OpenSearch clusters and BEIR data loaded into them.

Clusters start once per session, on first use, and stop at the end. To iterate faster, point the suite at
clusters you already run (`python -m rerank_proxy_tools.localcluster run elasticsearch`) with RERANK_TEST_ES_URL /
RERANK_TEST_OS_URL. Every test that uses a cluster fixture is marked `integration` automatically, so
`pytest -m "not integration"` runs without Java.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from rerank_proxy_tools.localcluster import LocalCluster
from tests.beir import corpus_size, data_root, load_beir_corpus

SCIFACT_INDEX = "scifact"
_TEXT_MAPPING = {"properties": {"title": {"type": "text"}, "text": {"type": "text"}}}
# One shard: BM25 statistics, and so the order the proxy reranks, are then exact and repeatable.
_INDEX_SETTINGS = {"number_of_shards": 1, "number_of_replicas": 0}

CLUSTER_FIXTURES = frozenset({
    "es_url", "os_url", "es_client", "os_client", "cluster", "scifact_es", "scifact_os", "scifact_cluster",
})


class ClusterRef(NamedTuple):
    flavor: str  # "elasticsearch" or "opensearch"
    url: str


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CLUSTER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def _cluster_url(flavor: str, env_var: str) -> Iterator[str]:
    external = os.environ.get(env_var)
    if external:
        yield external.rstrip("/")
        return
    cluster = LocalCluster(flavor)  # type: ignore[arg-type]
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def es_url() -> Iterator[str]:
    """Base URL of a real single-node Elasticsearch 8 (integ-test-zip: security off, few modules)."""
    yield from _cluster_url("elasticsearch", "RERANK_TEST_ES_URL")


@pytest.fixture(scope="session")
def os_url() -> Iterator[str]:
    """Base URL of a real single-node OpenSearch 2."""
    yield from _cluster_url("opensearch", "RERANK_TEST_OS_URL")


@pytest.fixture(scope="session")
def es_client(es_url: str) -> Iterator[Any]:
    from elasticsearch import Elasticsearch

    client = Elasticsearch(es_url, request_timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def os_client(os_url: str) -> Iterator[Any]:
    from opensearchpy import OpenSearch

    client = OpenSearch(os_url, timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session", params=["elasticsearch", "opensearch"])
def cluster(request: pytest.FixtureRequest) -> ClusterRef:
    """Runs the test once against each real cluster (no data loaded)."""
    url = request.getfixturevalue("es_url" if request.param == "elasticsearch" else "os_url")
    return ClusterRef(request.param, url)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The BEIR collections: $RERANK_DATA_DIR, else `<repo>/../shared/data`."""
    path = data_root()
    if not path.is_dir():
        pytest.fail(f"test data folder {path} is missing; set RERANK_DATA_DIR to the shared BEIR data")
    return path


def load_beir_index(
    client: Any,
    bulk: Callable[..., Any],
    name: str,
    index: str,
    create: Callable[[str], Any],
) -> None:
    """Index BEIR collection `name` as `index` (title, text) unless it is already there with every document.

    `bulk` is the client library's helpers.bulk; `create(index)` creates the index with mapping and settings,
    since the two clients spell that call differently.
    """
    expected = corpus_size(name)
    if client.indices.exists(index=index):
        client.indices.refresh(index=index)
        if client.count(index=index)["count"] == expected:
            return
        client.indices.delete(index=index)  # a partial load from an interrupted session
    create(index)
    actions = (
        {"_index": index, "_id": doc["_id"], "_source": {"title": doc["title"], "text": doc["text"]}}
        for doc in load_beir_corpus(name)
    )
    bulk(client, actions, chunk_size=1000)
    client.indices.refresh(index=index)
    count = client.count(index=index)["count"]
    if count != expected:
        raise AssertionError(f"{index}: indexed {count} of {expected} documents from {name}")


@pytest.fixture(scope="session")
def scifact_es(es_client: Any, es_url: str, shared_data_dir: Path) -> str:
    """Elasticsearch base URL with index `scifact` holding the full SciFact corpus."""
    from elasticsearch import helpers

    def create(index: str) -> None:
        es_client.indices.create(index=index, settings=_INDEX_SETTINGS, mappings=_TEXT_MAPPING)

    load_beir_index(es_client, helpers.bulk, "scifact", SCIFACT_INDEX, create)
    return es_url


@pytest.fixture(scope="session")
def scifact_os(os_client: Any, os_url: str, shared_data_dir: Path) -> str:
    """OpenSearch base URL with index `scifact` holding the full SciFact corpus."""
    from opensearchpy import helpers

    def create(index: str) -> None:
        os_client.indices.create(index=index, body={"settings": _INDEX_SETTINGS, "mappings": _TEXT_MAPPING})

    load_beir_index(os_client, helpers.bulk, "scifact", SCIFACT_INDEX, create)
    return os_url


@pytest.fixture(scope="session", params=["elasticsearch", "opensearch"])
def scifact_cluster(request: pytest.FixtureRequest) -> ClusterRef:
    """Runs the test once against each real cluster, with index `scifact` loaded."""
    url = request.getfixturevalue("scifact_es" if request.param == "elasticsearch" else "scifact_os")
    return ClusterRef(request.param, url)
