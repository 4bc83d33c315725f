"""The one "create an index and bulk-load it" helper (rerank_proxy_tools/indexing.py): its request bodies, offline.
Against real clusters it runs in the eval, demo and language-gate integration tests."""
from __future__ import annotations

import orjson

from rerank_proxy_tools.indexing import bulk_bodies, reason

DOCS = [{"_id": 1, "title": "one", "text": "first"}, {"_id": "2", "title": "two", "text": "ünïcode"},
        {"_id": "3", "title": "three", "text": "third"}]


def lines_of(body: bytes) -> list[dict]:
    assert body.endswith(b"\n")
    return [orjson.loads(line) for line in body.split(b"\n")[:-1]]


def test_each_document_keeps_its_id_and_its_source_is_the_rest():
    [(body, count)] = bulk_bodies(DOCS)
    assert count == 3
    assert lines_of(body) == [
        {"index": {"_id": "1"}}, {"title": "one", "text": "first"},
        {"index": {"_id": "2"}}, {"title": "two", "text": "ünïcode"},
        {"index": {"_id": "3"}}, {"title": "three", "text": "third"},
    ]


def test_bodies_carry_at_most_chunk_docs_documents():
    assert [count for _, count in bulk_bodies(DOCS, chunk_docs=2)] == [2, 1]
    assert list(bulk_bodies([])) == []


def test_source_and_id_field_are_the_callers_choice():
    docs = [{"key": "a", "text": "x", "extra": 1}]
    [(body, _)] = bulk_bodies(docs, id_field="key", source=lambda doc: {"text": doc["text"]})
    assert lines_of(body) == [{"index": {"_id": "a"}}, {"text": "x"}]


def test_reason_is_the_clusters_or_the_start_of_the_body():
    assert reason({"error": {"reason": "no such index"}, "status": 404}) == "no such index"
    assert reason("<html>bad gateway</html>" + "x" * 400) == ("<html>bad gateway</html>" + "x" * 400)[:300]
