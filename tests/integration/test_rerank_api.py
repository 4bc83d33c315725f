"""The rerank API through real clients: the official `cohere` SDK (v1 and v2 clients), LangChain's `CohereRerank` and
TEI's wire format get the ranking the proxy serves for the same query and documents, errors come as the SDK expects
them, and another proxy's `remote` backend pointed at the API reranks a search as the local model does."""
from __future__ import annotations

import os

import orjson
import pytest

from tests.integration.conftest import WINDOW, proxy_config, raw
from tests.proxyrunner import MINILM, RunningProxy

cohere = pytest.importorskip("cohere")

pytestmark = pytest.mark.integration

QUERY = "vitamin D deficiency and bone density"
SEARCH = {"query": {"match": {"text": QUERY}}, "size": WINDOW}
TOKEN_ENV = "RERANK_TEST_API_TOKEN"
TOKEN = "api-secret-for-tests"


@pytest.fixture(scope="module")
def proxy(scifact_es):
    os.environ[TOKEN_ENV] = TOKEN
    config = proxy_config(scifact_es, rerank_api={"token_env": TOKEN_ENV, "max_documents": 50,
                                                  "max_tokens_per_doc": 256})
    with RunningProxy(config) as running:
        yield running
    del os.environ[TOKEN_ENV]


@pytest.fixture(scope="module")
def served(proxy):
    """The window as the cluster ranks it (texts as the proxy builds them) and the order the proxy serves."""
    direct = orjson.loads(raw("POST", f"{proxy.config.upstreams[0]}/scifact/_search", orjson.dumps(SEARCH)).body)
    hits = direct["hits"]["hits"]
    reply = raw("POST", f"{proxy.url}/scifact/_search", orjson.dumps(SEARCH))
    assert reply.headers["X-Rerank-Status"] == "reranked"
    order = [hit["_id"] for hit in orjson.loads(reply.body)["hits"]["hits"]]
    return hits, order


def texts_of(hits):
    return ["\n".join(v for v in (hit["_source"].get("title"), hit["_source"].get("text")) if v) for hit in hits]


def test_the_cohere_v2_client_gets_the_order_the_proxy_serves(proxy, served):
    hits, order = served
    client = cohere.ClientV2(api_key=TOKEN, base_url=proxy.admin_url)
    answer = client.rerank(model="minilm", query=QUERY, documents=texts_of(hits), max_tokens_per_doc=256)
    assert [hits[r.index]["_id"] for r in answer.results] == order
    scores = [r.relevance_score for r in answer.results]
    assert scores == sorted(scores, reverse=True)


def test_the_cohere_v1_client_ranks_objects_by_rank_fields_and_returns_them(proxy, served):
    hits, order = served
    documents = [{"title": h["_source"]["title"], "text": h["_source"]["text"], "id": h["_id"]} for h in hits]
    client = cohere.Client(api_key=TOKEN, base_url=proxy.admin_url)
    answer = client.rerank(model=MINILM["source"], query=QUERY, documents=documents, rank_fields=["title", "text"],
                           return_documents=True, top_n=5)
    assert [r.index for r in answer.results] == [[h["_id"] for h in hits].index(i) for i in order[:5]]
    assert answer.results[0].document.id == order[0]  # the object comes back whole


def test_langchains_cohere_reranker_pointed_at_the_api_keeps_the_served_order(proxy, served):
    # LangChain's own client (langchain-cohere, a document compressor for RAG pipelines) as a second real caller.
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    hits, order = served
    reranker = CohereRerank(model="minilm", cohere_api_key=TOKEN, base_url=proxy.admin_url, top_n=5)
    documents = [Document(page_content=text, metadata={"id": h["_id"]}) for h, text in zip(hits, texts_of(hits))]
    kept = reranker.compress_documents(documents, QUERY)
    assert [d.metadata["id"] for d in kept] == order[:5]
    scores = [d.metadata["relevance_score"] for d in kept]
    assert scores == sorted(scores, reverse=True)


def test_a_tei_call_gets_the_same_order(proxy, served):
    hits, order = served
    body = orjson.dumps({"query": QUERY, "texts": texts_of(hits), "return_text": True})
    reply = raw("POST", f"{proxy.admin_url}/rerank", body,
                {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    assert reply.status == 200, reply.body
    ranks = orjson.loads(reply.body)
    assert [hits[r["index"]]["_id"] for r in ranks] == order
    assert all(r["text"] == texts_of(hits)[r["index"]] for r in ranks)


def test_an_unknown_model_raises_the_sdks_not_found_error(proxy):
    client = cohere.ClientV2(api_key=TOKEN, base_url=proxy.admin_url)
    with pytest.raises(cohere.errors.NotFoundError) as err:
        client.rerank(model="rerank-v3.5", query=QUERY, documents=["a"])
    assert "minilm" in str(err.value.body)


def test_a_call_without_the_token_is_refused(proxy):
    client = cohere.ClientV2(api_key="wrong", base_url=proxy.admin_url)
    with pytest.raises(cohere.errors.UnauthorizedError):
        client.rerank(model="minilm", query=QUERY, documents=["a"])


@pytest.mark.parametrize("path, body, status, field", [
    ("/v2/rerank", {"model": "minilm", "query": "", "documents": ["a"]}, 400, "message"),
    ("/v2/rerank", {"model": "minilm", "query": "q", "documents": ["a"] * 51}, 413, "message"),
    ("/v1/rerank", {"query": "q", "documents": [{"title": "no text"}]}, 400, "message"),
    ("/v1/rerank", {"query": "q"}, 400, "message"),
    ("/rerank", {"query": "q", "texts": "not a list"}, 422, "error"),
    ("/rerank", {"query": "q", "texts": []}, 422, "error"),
])
def test_bad_calls_get_a_clear_4xx_in_the_apis_own_dialect(proxy, path, body, status, field):
    reply = raw("POST", f"{proxy.admin_url}{path}", orjson.dumps(body), {"Authorization": f"Bearer {TOKEN}"})
    assert reply.status == status and field in orjson.loads(reply.body), reply.body


def test_the_api_is_not_served_on_the_data_port(proxy):
    reply = raw("POST", f"{proxy.url}/v2/rerank", orjson.dumps({"query": "q", "documents": ["a"]}),
                {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert reply.status != 200  # the cluster's own answer: it has no such endpoint


def test_calls_are_counted_per_route_model_and_status(proxy, served):
    hits, _ = served
    client = cohere.ClientV2(api_key=TOKEN, base_url=proxy.admin_url)
    client.rerank(model="minilm", query=QUERY, documents=texts_of(hits)[:3])
    metrics = raw("GET", f"{proxy.admin_url}/_rerank_proxy/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    text = metrics.body.decode()
    assert 'rerank_proxy_api_requests_total{model="minilm",route="cohere-v2",status="200"}' in text
    assert 'rerank_proxy_api_documents_total{model="minilm",route="cohere-v2"}' in text


@pytest.mark.parametrize("api", ["cohere", "tei"])
def test_another_proxys_remote_backend_pointed_at_the_api_reranks_as_the_local_model(proxy, served, api):
    _, order = served
    remote = {"backend": "remote", "source": proxy.admin_url, "api": api, "remote_model": "minilm",
              "api_key_env": TOKEN_ENV}
    config = proxy_config(proxy.config.upstreams[0], models={"gpu-host": remote})
    with RunningProxy(config) as second:
        reply = raw("POST", f"{second.url}/scifact/_search", orjson.dumps(SEARCH))
    assert reply.headers["X-Rerank-Status"] == "reranked"
    assert [hit["_id"] for hit in orjson.loads(reply.body)["hits"]["hits"]] == order
