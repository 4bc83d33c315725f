"""The language gate through the real proxy in front of real clusters: with an English model, Thai, Arabic and
Chinese searches are the cluster's own answer (`skipped; reason=language`), English ones are reranked, and the
skips are counted by reason in the metrics."""
from __future__ import annotations

import json
import re

import orjson
import pytest

from rerank_proxy_tools import indexing
from tests.beir import data_root
from tests.integration.conftest import raw, without_took
from tests.proxyrunner import MINILM, RunningProxy

pytestmark = pytest.mark.integration

GATED = "lang-gate-docs"
OPEN = "lang-open-docs"  # the same documents, under a rule with `language_gate: false`
DOCS_PER_LANGUAGE = 40
WINDOW = 10
# XQuAD-R questions about its first paragraphs (Super Bowl 50); each finds several hits, its language's first.
QUERIES = {
    "th": "เหลือเวลาอีกกี่วินาทีตอนที่ทีมแพทริออตส์พลาดในการทำ 2 คะแนนหลังทัชดาวน์",
    "ar": "كم عدد الاستحواذات التي قام بها جاريد ألين في مسيرته؟",
    "zh": "贾里德在职业生涯中有多少次擒杀？",
}
ENGLISH = "How many career sacks did Jared Allen have?"
SETTINGS = {"number_of_shards": 1, "number_of_replicas": 0}


def documents() -> list[dict]:
    """The first paragraphs of XQuAD-R's corpus in English, Thai, Arabic and Chinese (parallel translations)."""
    docs = []
    for lang in ("en", *QUERIES):
        with (data_root() / "xquad-r" / lang / "corpus.jsonl").open(encoding="utf-8") as f:
            for line, _ in zip(f, range(DOCS_PER_LANGUAGE)):
                doc = json.loads(line)
                docs.append({"_id": f"{lang}-{doc['_id']}", "text": doc["text"].lstrip("\ufeff")})
    return docs


def load_index(url: str, index: str, docs: list[dict]) -> None:
    body = {"settings": SETTINGS, "mappings": {"properties": {"text": {"type": "text"}}}}
    indexing.load_index(url, index, docs, body=body, recreate=True)


@pytest.fixture(scope="module")
def gate(cluster):
    """The cluster with both indices loaded, and a proxy in front of it whose model serves English only."""
    if not (data_root() / "xquad-r").is_dir():
        pytest.skip(f"no XQuAD-R under {data_root()}")
    docs = documents()
    for index in (GATED, OPEN):
        load_index(cluster.url, index, docs)
    config = {
        "upstreams": [cluster.url],
        "models": {"minilm": {**MINILM, "languages": ["en"]}},
        "defaults": {"window": WINDOW, "text": {"fields": ["text"], "max_tokens": 256}, "fusion": {"mode": "replace"},
                     "timeout_ms": 120_000},
        "indices": [{"match": OPEN, "language_gate": False}, {"match": ".*", "enabled": False}],
    }
    with RunningProxy(config) as running:
        yield cluster.url, running
    for index in (GATED, OPEN):
        raw("DELETE", f"{cluster.url}/{index}")


def body(query: str) -> bytes:
    return orjson.dumps({"query": {"match": {"text": query}}, "size": WINDOW})


def language_skips(admin_url: str) -> float:
    text = raw("GET", f"{admin_url}/_rerank_proxy/metrics").body.decode()
    line = r'^rerank_proxy_searches_total\{index="_other",outcome="skipped",reason="language",variant="control"\} (\S+)$'
    found = re.search(line, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("lang", list(QUERIES))
def test_non_english_search_is_the_clusters_answer_byte_for_byte(gate, lang):
    url, proxy = gate
    direct = raw("POST", f"{url}/{GATED}/_search", body(QUERIES[lang]))
    proxied = raw("POST", f"{proxy.url}/{GATED}/_search", body(QUERIES[lang]))
    hits = orjson.loads(direct.body)["hits"]["hits"]
    assert len(hits) >= 3 and hits[0]["_id"].startswith(f"{lang}-")
    assert proxied.headers["X-Rerank-Status"] == "skipped; reason=language"
    assert (proxied.status, without_took(proxied.body)) == (direct.status, without_took(direct.body))
    assert proxied.headers["Content-Type"] == direct.headers["Content-Type"]


def test_english_search_is_reranked(gate):
    url, proxy = gate
    direct = orjson.loads(raw("POST", f"{url}/{GATED}/_search", body(ENGLISH)).body)["hits"]["hits"]
    proxied = raw("POST", f"{proxy.url}/{GATED}/_search", body(ENGLISH))
    assert proxied.headers["X-Rerank-Status"] == "reranked"
    reranked = orjson.loads(proxied.body)["hits"]["hits"]
    assert sorted(h["_id"] for h in reranked) == sorted(h["_id"] for h in direct)
    assert reranked[0]["_id"] == "en-3"  # the paragraph on Jared Allen's career sacks


def test_an_index_with_the_gate_off_reranks_every_language(gate):
    _, proxy = gate
    for query in QUERIES.values():
        assert raw("POST", f"{proxy.url}/{OPEN}/_search", body(query)).headers["X-Rerank-Status"] == "reranked"


@pytest.mark.parametrize("lang", list(QUERIES))
def test_rerank_on_header_overrides_the_gate_and_the_model_would_have_reordered(gate, lang):
    url, proxy = gate
    reply = raw("POST", f"{proxy.url}/{GATED}/_search", body(QUERIES[lang]), {"X-Rerank": "on"})
    assert reply.headers["X-Rerank-Status"] == "reranked"
    direct = orjson.loads(raw("POST", f"{url}/{GATED}/_search", body(QUERIES[lang])).body)["hits"]["hits"]
    reranked = orjson.loads(reply.body)["hits"]["hits"]
    assert sorted(h["_id"] for h in reranked) == sorted(h["_id"] for h in direct)
    assert [h["_id"] for h in reranked] != [h["_id"] for h in direct]  # what the gate spared these searches


def test_msearch_gates_each_item_on_its_own_query(gate):
    url, proxy = gate
    lines = [{"index": GATED}, {"query": {"match": {"text": QUERIES["zh"]}}, "size": WINDOW},
             {"index": GATED}, {"query": {"match": {"text": ENGLISH}}, "size": WINDOW}]
    ndjson = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    reply = raw("POST", f"{proxy.url}/_msearch", ndjson, {"Content-Type": "application/x-ndjson"})
    assert reply.headers["X-Rerank-Status"] == "skipped; reason=language, reranked"
    zh, _ = orjson.loads(reply.body)["responses"]
    direct = orjson.loads(raw("POST", f"{url}/{GATED}/_search", body(QUERIES["zh"])).body)
    assert [h["_id"] for h in zh["hits"]["hits"]] == [h["_id"] for h in direct["hits"]["hits"]]


def test_language_skips_are_counted_in_the_metrics(gate):
    _, proxy = gate
    before = language_skips(proxy.admin_url)
    for query in QUERIES.values():
        raw("POST", f"{proxy.url}/{GATED}/_search", body(query))
    raw("POST", f"{proxy.url}/{GATED}/_search", body(ENGLISH))
    assert language_skips(proxy.admin_url) == before + len(QUERIES)
