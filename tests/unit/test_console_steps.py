"""The console's pure parts: the compare result built from a scored window, rank movement, the search it sends, the
fixed set of files it serves and their content types, the eval file it charts, and its routes' answers to bad
requests."""
from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from proxy.config import ConfigError, parse_config
from proxy.console import (
    CONTENT_SECURITY_POLICY,
    STATIC_FILES,
    EvalUnreadable,
    console_headers,
    console_reply,
    movement,
    query_body,
    read_eval,
    reranked_column,
    static_name,
    text_fields,
)
from proxy.search import Scored, cluster_order
from proxy.wire import RequestHead
from rerank.chunking import Chunking, split
from rerank.ranking import Fusion, rank

REPO = Path(__file__).resolve().parents[2]
MODELS = {"m": {"backend": "bi-encoder", "source": "x"}}


def _hits(*scores: float) -> list[dict[str, Any]]:
    return [{"_index": "docs", "_id": f"d{i}", "_score": s, "_source": {"title": f"Title {i}"}}
            for i, s in enumerate(scores)]


# ---- movement --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cluster_rank", "rank", "expected"), [
    (3, 1, {"kind": "up", "by": 2}),
    (1, 4, {"kind": "down", "by": 3}),
    (2, 2, {"kind": "same", "by": 0}),
    (7, 2, {"kind": "new", "by": 5}),  # past the cluster's page of 5: the cluster never showed it
    (5, 5, {"kind": "same", "by": 0}),
])
def test_movement_compares_the_cluster_rank_with_the_served_rank(cluster_rank, rank, expected):
    assert movement(cluster_rank, rank, page_size=5) == expected


# ---- the reranked column from a Scored ---------------------------------------------------------------------------


def test_the_reranked_column_is_the_page_in_the_new_order_with_cluster_ranks_scores_and_texts():
    hits = _hits(9.0, 8.0, 7.0, 6.0)
    model = [0.1, 0.9, 0.5]  # a window of three; the fourth hit is past it
    scored = Scored(rank([h["_score"] for h in hits], model, Fusion(mode="replace")), "reranked", 12.5, None,
                    ["text zero", "text one", "text two"], [h["_score"] for h in hits],
                    [("docs", h["_id"]) for h in hits[:3]])
    column = reranked_column(scored, hits, size=3)
    assert [row["id"] for row in column] == ["d1", "d2", "d0"]
    assert [row["cluster_rank"] for row in column] == [2, 3, 1]
    assert [row["movement"] for row in column] == [
        {"kind": "up", "by": 1}, {"kind": "up", "by": 1}, {"kind": "down", "by": 2}]
    assert [row["model_score"] for row in column] == [0.9, 0.5, 0.1]
    assert [row["score"] for row in column] == [0.9, 0.5, 0.1]  # replace: the fused score is the model's
    assert [row["cluster_score"] for row in column] == [8.0, 7.0, 9.0]
    assert [row["text"] for row in column] == ["text one", "text two", "text zero"]
    assert column[0]["title"] == "Title 1" and column[0]["chunk"] is None and column[0]["chunk_text"] is None


def test_a_hit_the_model_did_not_read_has_no_text_and_keeps_its_cluster_score():
    hits = _hits(9.0, 8.0, 7.0)
    scored = Scored(rank([9.0, 8.0, 7.0], [0.2, 0.4], Fusion(mode="replace")), "reranked", 1.0, None,
                    ["a", "b"], [9.0, 8.0, 7.0])
    last = reranked_column(scored, hits, size=3)[2]
    assert (last["id"], last["text"], last["score"], last["model_score"]) == ("d2", None, None, None)
    assert last["movement"] == {"kind": "same", "by": 0}


def test_a_hit_rising_from_past_the_cluster_page_is_new():
    hits = _hits(5.0, 4.0, 3.0)
    scored = Scored(rank([5.0, 4.0, 3.0], [0.1, 0.2, 0.9], Fusion(mode="replace")), "reranked", 1.0, None,
                    ["a", "b", "c"], [5.0, 4.0, 3.0])
    column = reranked_column(scored, hits, size=2)
    assert [row["id"] for row in column] == ["d2", "d1"]
    assert column[0]["movement"] == {"kind": "new", "by": 2}


def test_with_chunking_the_column_shows_the_chunk_that_scored_best():
    chunking = Chunking(size=4, overlap=1)
    long_text = "one two three four five six seven eight nine ten"
    best = split(long_text, chunking)[1]
    hits = _hits(2.0, 1.0)
    scored = Scored(rank([2.0, 1.0], [0.3, 0.8], Fusion(mode="replace")), "reranked", 1.0, [None, 1],
                    ["short", long_text], [2.0, 1.0])
    top = reranked_column(scored, hits, size=2, chunking=chunking)[0]
    assert (top["id"], top["chunk"], top["chunk_text"], top["text"]) == ("d1", 1, best, long_text)


def test_a_skipped_search_shows_the_cluster_order_unmoved():
    hits = _hits(3.0, 2.0, 1.0)
    column = reranked_column(cluster_order(hits, "skipped; reason=disabled"), hits, size=2)
    assert [(r["id"], r["movement"]["kind"], r["score"], r["text"]) for r in column] == [
        ("d0", "same", None, None), ("d1", "same", None, None)]


def test_the_title_falls_back_to_the_first_line_of_the_text_read():
    hits = [{"_index": "i", "_id": "x", "_score": 1.0, "_source": {"body": "..."}}]
    scored = Scored(rank([1.0], [0.5], Fusion()), "reranked", 1.0, None, ["\n  First line  \nsecond"], [1.0])
    assert reranked_column(scored, hits, size=1)[0]["title"] == "First line"


# ---- the search sent, the headers it stands for ----------------------------------------------------------------


def test_the_console_searches_the_configured_fields_or_the_default_ones():
    assert query_body("bone density", ["title", "text"], 7) == {
        "query": {"multi_match": {"query": "bone density", "fields": ["title", "text"], "lenient": True}}, "size": 7}
    assert query_body("bone density", None, 10) == {"query": {"simple_query_string": {"query": "bone density"}},
                                                    "size": 10}


def test_text_fields_walks_every_index_of_a_mapping_answer():
    mappings = {
        "a": {"mappings": {"properties": {"title": {"type": "text"}, "n": {"type": "long"},
                                          "meta": {"properties": {"note": {"type": "text"}}}}}},
        "b": {"mappings": {"properties": {"title": {"type": "text"}, "body": {"type": "text"}}}},
        "broken": "not a mapping",
    }
    assert text_fields(mappings) == ["title", "meta.note", "body"]


def test_every_variant_is_forced_on_unless_it_says_whether_to_rerank():
    config = parse_config({"models": MODELS, "variants": {"wide": {"window": 80}, "off": {"enabled": False}}})
    assert console_headers(config, "control") == {"X-Rerank-Variant": "control", "X-Rerank": "on"}
    assert console_headers(config, "wide") == {"X-Rerank-Variant": "wide", "X-Rerank": "on"}
    assert console_headers(config, "off") == {"X-Rerank-Variant": "off"}


# ---- static files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rest", ["", "index.html", "console.js", "console.css", "favicon.svg"])
def test_the_console_serves_its_own_files(rest):
    assert static_name(rest) in STATIC_FILES


@pytest.mark.parametrize("rest", [
    "../admin.py", "..", "ui/../console.js", "%2e%2e/config.py", "console.js/x", "CONSOLE.JS", "api", "ui",
    "/etc/passwd", "console.py", "index.html?x", ".", "./index.html",
])
def test_no_other_name_reaches_the_disk(rest):
    assert static_name(rest) is None


def test_each_file_has_its_content_type_and_is_package_data():
    assert STATIC_FILES == {
        "index.html": "text/html; charset=utf-8", "console.js": "text/javascript; charset=utf-8",
        "console.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml",
    }
    folder = resources.files("proxy") / "ui"
    assert all((folder / name).is_file() for name in STATIC_FILES)
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "ui/*" in package_data["proxy"]


def test_the_page_loads_nothing_from_outside_the_proxy():
    for name in STATIC_FILES:
        text = (resources.files("proxy") / "ui" / name).read_text(encoding="utf-8")
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, name
        assert "style=" not in text and "innerHTML" not in text, name  # the CSP allows no inline style or markup
    page = (resources.files("proxy") / "ui" / "index.html").read_text(encoding="utf-8")
    assert "<script>" not in page and '<script type="module" src="/_rerank_proxy/ui/console.js">' in page


# ---- the eval file ---------------------------------------------------------------------------------------------


def test_the_eval_file_is_read_as_eval_writes_it(tmp_path):
    path = tmp_path / "eval.json"
    results = {"scifact": {"bm25": {"ndcg@10": 0.66, "mrr@10": 0.63, "recall@100": 0.9},
                           "reranked": {"ndcg@10": 0.69, "mrr@10": 0.65, "recall@100": 0.9}}}
    path.write_bytes(orjson.dumps(results))
    assert read_eval(path) == results


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b'{"d": {"run": {"ndcg@10": "high"}}}',
                                     b'{"d": {"run": [0.5]}}', b'{"d": {"run": {"ndcg@10": true}}}'])
def test_a_file_that_is_not_eval_output_is_refused_with_its_name(tmp_path, content):
    path = tmp_path / "eval.json"
    path.write_bytes(content)
    with pytest.raises(EvalUnreadable, match="eval.json"):
        read_eval(path)


def test_a_missing_eval_file_is_refused_with_its_name(tmp_path):
    with pytest.raises(EvalUnreadable, match="cannot read .*missing.json"):
        read_eval(tmp_path / "missing.json")


def test_console_eval_json_is_a_checked_config_key(tmp_path):
    config = parse_config({"models": MODELS, "console": {"eval_json": str(tmp_path / "e.json")}})
    assert config.console.eval_json == tmp_path / "e.json"
    assert parse_config({"models": MODELS}).console.eval_json is None
    with pytest.raises(ConfigError, match="console.eval_jsn"):
        parse_config({"models": MODELS, "console": {"eval_jsn": "x"}})


# ---- routes ----------------------------------------------------------------------------------------------------


class _Body:
    def __init__(self, data: bytes):
        self.data = data

    async def read(self, limit: int) -> bytes | None:
        return self.data if len(self.data) <= limit else None


def _incoming(method: str, path: str, body: bytes = b"") -> SimpleNamespace:
    return SimpleNamespace(head=RequestHead(method=method, target=path.encode()), body=_Body(body))


def _state(**config: Any) -> SimpleNamespace:
    return SimpleNamespace(config=parse_config({"models": MODELS, "variants": {"wide": {"window": 80}}, **config}))


def _header(reply: Any, name: bytes) -> bytes | None:
    for line in reply.lines:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


async def test_the_page_is_served_with_its_type_and_a_strict_policy():
    reply = await console_reply(_incoming("GET", "/_rerank_proxy/ui"), _state(), "")
    assert reply.status == 200 and reply.body.startswith(b"<!doctype html>")
    assert _header(reply, b"Content-Type") == b"text/html; charset=utf-8"
    assert _header(reply, b"Content-Security-Policy") == CONTENT_SECURITY_POLICY.encode()
    assert CONTENT_SECURITY_POLICY.startswith("default-src 'self'")
    assert _header(reply, b"X-Content-Type-Options") == b"nosniff"
    script = await console_reply(_incoming("GET", "/_rerank_proxy/ui/console.js"), _state(), "console.js")
    assert _header(script, b"Content-Type") == b"text/javascript; charset=utf-8"


@pytest.mark.parametrize(("method", "rest"), [("GET", "../config.py"), ("POST", "index.html"), ("GET", "api/nope"),
                                              ("GET", "api/compare"), ("POST", "api/indices")])
async def test_anything_else_under_ui_is_not_found(method, rest):
    reply = await console_reply(_incoming(method, f"/_rerank_proxy/ui/{rest}"), _state(), rest)
    assert reply.status == 404
    assert orjson.loads(reply.body)["error"]["type"] == "rerank_proxy_admin_exception"


@pytest.mark.parametrize(("body", "why"), [
    (b"{broken", "Invalid JSON"),
    (b'{"index": "docs"}', "query"),
    (b'{"index": "docs", "query": "q", "size": 0}', "size"),
    (b'{"index": "docs", "query": "q", "variants": []}', "variants"),
    (b'{"index": "docs", "query": "q", "extra": 1}', "extra"),
    (b'{"index": "docs", "query": "q", "variants": ["control", "nope"]}', "unknown variant.*nope.*control, wide"),
    (b"x" * (64 * 1024 + 1), "larger than"),
])
async def test_a_bad_compare_request_is_answered_400_with_the_reason(body, why):
    reply = await console_reply(_incoming("POST", "/_rerank_proxy/ui/api/compare", body), _state(), "api/compare")
    assert reply.status == 400
    error = orjson.loads(reply.body)["error"]
    assert error["type"] == "rerank_proxy_console_exception"
    assert re.search(why, error["reason"]), error["reason"]


async def test_without_an_eval_file_the_api_says_it_is_not_configured():
    reply = await console_reply(_incoming("GET", "/_rerank_proxy/ui/api/eval"), _state(), "api/eval")
    assert reply.status == 200 and orjson.loads(reply.body) == {"configured": False, "results": None}


async def test_an_unreadable_eval_file_is_a_404_that_names_it(tmp_path):
    state = _state(console={"eval_json": str(tmp_path / "gone.json")})
    reply = await console_reply(_incoming("GET", "/_rerank_proxy/ui/api/eval"), state, "api/eval")
    assert reply.status == 404 and "gone.json" in orjson.loads(reply.body)["error"]
