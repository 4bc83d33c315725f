"""Query text extraction from search requests: DSL, q=, per-index path, Lucene syntax."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.query_text import extract_query_text, lucene_to_text


def dsl(query: Any, **rest: Any) -> str | None:
    return extract_query_text({"query": query, **rest}, {})


# --- full-text leaves -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["match", "match_phrase", "match_phrase_prefix", "match_bool_prefix"])
def test_match_family_short_form(kind: str) -> None:
    assert dsl({kind: {"title": "quick fox"}}) == "quick fox"


@pytest.mark.parametrize("kind", ["match", "match_phrase", "match_phrase_prefix", "match_bool_prefix"])
def test_match_family_long_form(kind: str) -> None:
    assert dsl({kind: {"title": {"query": "quick fox", "operator": "and", "boost": 2}}}) == "quick fox"


@pytest.mark.parametrize("kind", ["multi_match", "combined_fields"])
def test_multi_field_queries_read_query_key(kind: str) -> None:
    assert dsl({kind: {"query": "quick fox", "fields": ["title^2", "body"]}}) == "quick fox"


@pytest.mark.parametrize("kind", ["query_string", "simple_query_string"])
def test_lucene_queries_are_reduced_to_words(kind: str) -> None:
    assert dsl({kind: {"query": 'title:"quick fox" AND +jumps^2', "default_field": "body"}}) == "quick fox jumps"


def test_whitespace_is_collapsed() -> None:
    assert dsl({"match": {"title": "  quick \n\t fox "}}) == "quick fox"


# --- compound queries: which clauses carry relevance ----------------------------------------------------------


def test_bool_reads_must_and_should_in_document_order() -> None:
    query = {"bool": {"should": [{"match": {"a": "first"}}], "must": {"match": {"b": "second"}}}}
    assert dsl(query) == "first second"


def test_bool_ignores_filter_and_must_not() -> None:
    query = {
        "bool": {
            "must": [{"match": {"title": "laptop"}}],
            "filter": [{"match": {"brand": "acme"}}],
            "must_not": [{"match": {"title": "refurbished"}}],
        }
    }
    assert dsl(query) == "laptop"


@pytest.mark.parametrize(
    "query",
    [
        {"dis_max": {"queries": [{"match": {"a": "fox"}}], "tie_breaker": 0.3}},
        {"function_score": {"query": {"match": {"a": "fox"}}, "functions": [{"filter": {"match": {"b": "no"}}}]}},
        {"script_score": {"query": {"match": {"a": "fox"}}, "script": {"source": "_score"}}},
        {"boosting": {"positive": {"match": {"a": "fox"}}, "negative": {"match": {"a": "no"}}, "negative_boost": 0.5}},
        {"constant_score": {"filter": {"match": {"a": "fox"}}, "boost": 1.2}},
        {"nested": {"path": "comments", "query": {"match": {"comments.text": "fox"}}}},
        {"has_child": {"type": "answer", "query": {"match": {"body": "fox"}}}},
        {"has_parent": {"parent_type": "question", "query": {"match": {"body": "fox"}}}},
    ],
    ids=["dis_max", "function_score", "script_score", "boosting", "constant_score", "nested", "has_child", "has_parent"],
)
def test_wrappers_are_followed_to_their_scoring_query(query: dict[str, Any]) -> None:
    assert dsl(query) == "fox"


def test_deeply_nested_compounds_are_walked_depth_first() -> None:
    query = {
        "function_score": {
            "query": {
                "bool": {
                    "must": [
                        {"dis_max": {"queries": [{"match": {"a": "one"}}, {"match_phrase": {"b": "two"}}]}},
                        {"nested": {"path": "n", "query": {"multi_match": {"query": "three"}}}},
                    ],
                    "should": {"match": {"c": "four"}},
                }
            }
        }
    }
    assert dsl(query) == "one two three four"


def test_rescore_and_knn_are_ignored() -> None:
    body = {
        "query": {"match": {"title": "fox"}},
        "rescore": {"query": {"rescore_query": {"match": {"title": "other"}}}},
        "knn": {"field": "v", "query_vector": [0.1], "k": 5},
    }
    assert extract_query_text(body, {}) == "fox"


def test_knn_alone_has_no_text() -> None:
    assert extract_query_text({"knn": {"field": "v", "query_vector": [0.1], "k": 5}}, {}) is None


# --- several texts --------------------------------------------------------------------------------------------


def test_repeated_text_appears_once() -> None:
    query = {
        "bool": {
            "should": [
                {"multi_match": {"query": "quick fox", "fields": ["title", "body"]}},
                {"match_phrase": {"title": {"query": "quick  fox", "boost": 3}}},
            ]
        }
    }
    assert dsl(query) == "quick fox"


def test_duplicate_detection_ignores_case_and_keeps_first_spelling() -> None:
    query = {"bool": {"should": [{"match": {"a": "Quick Fox"}}, {"match": {"b": "quick fox"}}]}}
    assert dsl(query) == "Quick Fox"


def test_distinct_texts_are_joined_with_one_space() -> None:
    query = {"bool": {"must": [{"match": {"a": "quick"}}, {"match": {"b": "brown fox"}}]}}
    assert dsl(query) == "quick brown fox"


def test_every_field_of_a_match_node_is_read() -> None:
    assert dsl({"match": {"title": "quick", "body": "fox"}}) == "quick fox"


# --- no text --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        {"match_all": {}},
        {"term": {"status": "published"}},
        {"bool": {"filter": [{"term": {"status": "x"}}, {"match": {"a": "filtered"}}]}},
        {"bool": {"must_not": {"match": {"a": "excluded"}}}},
        {"match": {"title": ""}},
        {"match": {"title": {"query": "   "}}},
        {"multi_match": {"query": "\n\t"}},
        {"query_string": {"query": "_exists_:title"}},
        {"query_string": {"query": "*:*"}},
        {"range": {"year": {"gte": 2000}}},
    ],
    ids=["match_all", "term", "filter_only", "must_not_only", "empty", "blank_long", "blank_multi", "exists", "all", "range"],
)
def test_queries_without_text_give_none(query: dict[str, Any]) -> None:
    assert dsl(query) is None


def test_no_body_and_no_q_gives_none() -> None:
    assert extract_query_text(None, {}) is None


def test_empty_body_gives_none() -> None:
    assert extract_query_text({}, {"size": "10"}) is None


# --- odd input never raises -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"query": "fox"},
        {"query": ["match", "fox"]},
        {"query": {"match": "fox"}},
        {"query": {"match": ["fox"]}},
        {"query": {"match": {"title": {"query": 42}}}},
        {"query": {"match": {"title": None}}},
        {"query": {"bool": [{"match": {"a": "fox"}}]}},
        {"query": {"bool": {"must": "fox"}}},
        {"query": {"bool": {"must": [None, 3, "x", []]}}},
        {"query": {"multi_match": {"query": ["fox"]}}},
        {"query": {"query_string": "fox"}},
        {"query": {"dis_max": {"queries": {"also": "odd"}}}},
        {"query": {"unknown_type": {"query": "fox"}}},
        ["not", "a", "dict"],
        "a string body",
    ],
)
def test_malformed_nodes_are_ignored(body: Any) -> None:
    assert extract_query_text(body, {}) is None


def test_malformed_siblings_do_not_hide_good_clauses() -> None:
    query = {"bool": {"must": [None, {"match": "odd"}, {"match": {"title": "fox"}}]}}
    assert dsl(query) == "fox"


def test_absurdly_deep_nesting_does_not_raise() -> None:
    query: dict[str, Any] = {"match": {"title": "fox"}}
    for _ in range(5000):
        query = {"bool": {"must": [query]}}
    assert dsl(query) is None


def test_non_string_q_is_ignored() -> None:
    assert extract_query_text(None, {"q": ["fox"]}) is None  # type: ignore[dict-item]


# --- q= parameter ---------------------------------------------------------------------------------------------


def test_q_param_used_when_body_has_no_query() -> None:
    assert extract_query_text({"size": 10}, {"q": "title:fox AND jumps"}) == "fox jumps"


def test_q_param_used_without_body() -> None:
    assert extract_query_text(None, {"q": "fox"}) == "fox"


def test_body_query_wins_over_q_param() -> None:
    assert extract_query_text({"query": {"match": {"a": "body"}}}, {"q": "param"}) == "body"


def test_blank_q_param_gives_none() -> None:
    assert extract_query_text(None, {"q": "  "}) is None


# --- query_path -----------------------------------------------------------------------------------------------


def test_query_path_wins_over_dsl() -> None:
    body = {"query": {"bool": {"must": [{"match": {"title": {"query": "picked"}}}, {"match": {"b": "other"}}]}}}
    assert extract_query_text(body, {}, query_path="query.bool.must.0.match.title.query") == "picked"


def test_query_path_can_point_outside_query() -> None:
    body = {"query": {"match_all": {}}, "ext": {"user_query": "what the user typed"}}
    assert extract_query_text(body, {}, query_path="ext.user_query") == "what the user typed"


def test_query_path_numeric_segment_indexes_lists() -> None:
    body = {"query": {"bool": {"should": [{"match": {"a": "zero"}}, {"match": {"a": "one"}}]}}}
    assert extract_query_text(body, {}, query_path="query.bool.should.1.match.a") == "one"


@pytest.mark.parametrize(
    "path",
    [
        "query.bool.must.5.match.title",  # index past the end
        "query.bool.must.x.match.title",  # non-numeric segment on a list
        "query.bool.must",  # resolves to a list, not a string
        "query.nowhere",
        "query.bool.must.0.match.title.query.deeper",  # walks past a string
        "query.bool.must.-1.match.title",
    ],
)
def test_unresolved_query_path_falls_back_to_dsl(path: str) -> None:
    body = {"query": {"bool": {"must": [{"match": {"title": "fallback"}}]}}}
    assert extract_query_text(body, {}, query_path=path) == "fallback"


def test_blank_query_path_value_falls_back_to_dsl() -> None:
    body = {"query": {"match": {"title": "fallback"}}, "ext": {"q": "  "}}
    assert extract_query_text(body, {}, query_path="ext.q") == "fallback"


def test_query_path_text_is_not_treated_as_lucene() -> None:
    body = {"ext": {"q": "C++ AND  title:x"}}
    assert extract_query_text(body, {}, query_path="ext.q") == "C++ AND title:x"


# --- Lucene syntax to words -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lucene", "words"),
    [
        ("title:fox", "fox"),
        ("book.title:fox", "fox"),
        ("quick AND fox OR dog NOT cat", "quick fox dog cat"),
        ("quick && fox || dog", "quick fox dog"),
        ("!cat", "cat"),
        ("+quick -lazy", "quick lazy"),
        ("(quick OR brown) AND fox", "quick brown fox"),
        ("title:(quick brown)", "quick brown"),
        ("quick^2 fox^0.5", "quick fox"),
        ("(quick fox)^3", "quick fox"),
        ("quikc~ brwn~1", "quikc brwn"),
        ('"quick fox"~5', "quick fox"),
        ('title:"quick fox"^2', "quick fox"),
        ("qu?ck fo*", "quck fo"),
        ("year:[2000 TO 2010] fox", "fox"),
        ("year:{2000 TO *] fox", "fox"),
        ("age:>=10 fox", "fox"),
        ("_exists_:title fox", "fox"),
        ("-_exists_:title fox", "fox"),
        ("_missing_:title fox", "fox"),
        ("name:/joh?n/ fox", "fox"),
        (r"c\+\+ 1\:2 \(x\)", "c++ 1:2 (x)"),
        (r"lit\*eral", "lit*eral"),
        ("c++ e-mail AT&T", "c++ e-mail AT&T"),
        ("quick | fox", "quick fox"),
        ("and or not", "and or not"),
        (r'"say \"hi\""', 'say "hi"'),
        ('"unterminated phrase', "unterminated phrase"),
        ("year:[2000 TO", ""),
        ("*", ""),
        ("*:*", ""),
        ("AND OR", ""),
        ("\\", ""),
    ],
)
def test_lucene_to_text(lucene: str, words: str) -> None:
    assert lucene_to_text(lucene) == words


def test_query_path_reads_no_dotted_key_and_walks_no_list() -> None:
    # unlike a `text.fields` path into _source (rerank.text.resolve_path's default), a body path is exact
    body = {"query": {"match": {"t": "fallback"}}, "ext": {"a.b": "dotted", "l": [{"q": "listed"}]}}
    assert extract_query_text(body, {}, query_path="ext.a.b") == "fallback"
    assert extract_query_text(body, {}, query_path="ext.l.q") == "fallback"
    assert extract_query_text(body, {}, query_path="ext.l.0.q") == "listed"
