"""The user's query text in an Elasticsearch/OpenSearch search request: what the reranker scores documents against.

Sources, in order: a per-index ``query_path`` into the body, the DSL ``query`` (full-text leaves found through the
relevance-bearing parts of compound queries), and the ``q=`` URL parameter when the body has no ``query``.
Lucene syntax is reduced to the words a person typed. Nothing here raises on odd input: what is not understood
is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from rerank.text import resolve_path

# Deeper nesting than any real query; bounds recursion so hostile bodies cannot raise RecursionError.
_MAX_DEPTH = 64

# Operators in query_string are upper-case only; a lower-case "and" is an ordinary word.
_OPERATORS = frozenset({"AND", "OR", "NOT", "&&", "||"})
# Field prefixes whose value names a field, not text: the clause is a pure filter.
_FILTER_FIELDS = frozenset({"_exists_", "_missing_"})

# Characters that end a term or field name unless escaped; '+', '-', '!' only act as operators at the start of a
# term (as in the classic parser), so "e-mail" and "c++" stay whole.
_STOP = r'\s:()"\[\]{}^~|\\'
_WORD = rf"(?:\\.|[^{_STOP}+\-!])(?:\\.|[^{_STOP}])*"
# One Lucene token per match, alternatives tried in order at each position.
_LUCENE_TOKEN = re.compile(
    rf"""
      "(?P<phrase>(?:\\.|[^"\\])*)"?         # quoted phrase, unterminated tolerated
    | (?P<range>[\[{{](?:\\.|[^\]}}\\])*[\]}}]?)  # [a TO b], {{a TO b}}: a filter, not words
    | (?P<regex>/(?:\\.|[^/\\])*/)             # /regex/: a pattern, not words
    | (?P<compare>[<>]=?(?:\\.|[^\s()\\])*)      # field:>=10
    | (?P<field>{_WORD}):                       # title:
    | (?P<modifier>[\^~][\d.]*)                 # boost ^2, fuzziness/proximity ~ ~2
    | (?P<term>{_WORD})
    | .                                         # whitespace, ( ) + - ! | and strays: dropped
    """,
    re.VERBOSE | re.DOTALL,
)
# In a term: an escaped character stands for itself, a bare wildcard character goes.
_TERM_CHARS = re.compile(r"\\(.)|[*?]", re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def lucene_to_text(query: str) -> str:
    """Plain words of a Lucene query string (``q=``, query_string, simple_query_string)."""
    words: list[str] = []
    skip_next = False  # the value after _exists_: is a field name
    for token in _LUCENE_TOKEN.finditer(query):
        kind = token.lastgroup
        if kind == "field":
            skip_next = token["field"] in _FILTER_FIELDS
            continue
        if kind == "phrase":
            word = _ESCAPE.sub(r"\1", token["phrase"])
        elif kind == "term" and token["term"] not in _OPERATORS:
            word = _TERM_CHARS.sub(lambda m: m[1] or "", token["term"])
        elif kind in ("range", "regex", "compare"):
            skip_next = False
            continue
        else:
            continue
        if not skip_next:
            words.append(word)
        skip_next = False
    return " ".join(" ".join(words).split())


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value


def _field_texts(node: Any, depth: int) -> Iterator[str]:
    """match family: ``{field: "text"}`` or ``{field: {"query": "text", ...}}``."""
    if isinstance(node, Mapping):
        for value in node.values():
            yield from _strings(value.get("query") if isinstance(value, Mapping) else value)


def _query_key(node: Any, depth: int) -> Iterator[str]:
    """multi_match, combined_fields: ``{"query": "text", "fields": [...]}``."""
    if isinstance(node, Mapping):
        yield from _strings(node.get("query"))


def _lucene(node: Any, depth: int) -> Iterator[str]:
    for text in _query_key(node, depth):
        yield lucene_to_text(text)


def _subqueries(*keys: str) -> Callable[[Any, int], Iterator[str]]:
    """Compound query: descend into the clauses under ``keys`` (one query or a list), in document order."""

    def read(node: Any, depth: int) -> Iterator[str]:
        if not isinstance(node, Mapping):
            return
        for key, value in node.items():
            if key in keys:
                for sub in value if isinstance(value, list) else (value,):
                    yield from _walk(sub, depth + 1)

    return read


# Query type -> how to read it. Anything absent (term, range, exists, knn, match_all, ...) carries no text.
# Only relevance-bearing clauses are followed: bool filter/must_not and boosting.negative are left out.
_READERS: dict[str, Callable[[Any, int], Iterator[str]]] = {
    "match": _field_texts,
    "match_phrase": _field_texts,
    "match_phrase_prefix": _field_texts,
    "match_bool_prefix": _field_texts,
    "multi_match": _query_key,
    "combined_fields": _query_key,
    "query_string": _lucene,
    "simple_query_string": _lucene,
    "bool": _subqueries("must", "should"),
    "dis_max": _subqueries("queries"),
    "function_score": _subqueries("query"),
    "script_score": _subqueries("query"),
    "boosting": _subqueries("positive"),
    "constant_score": _subqueries("filter"),
    "nested": _subqueries("query"),
    "has_child": _subqueries("query"),
    "has_parent": _subqueries("query"),
}


def _walk(query: Any, depth: int = 0) -> Iterator[str]:
    if depth > _MAX_DEPTH or not isinstance(query, Mapping):
        return
    for query_type, node in query.items():
        reader = _READERS.get(query_type)
        if reader is not None:
            yield from reader(node, depth)


def _join(texts: Iterator[str]) -> str | None:
    """Distinct texts, first occurrence wins, joined by a space; None when nothing is left."""
    seen: dict[str, str] = {}
    for text in texts:
        text = " ".join(text.split())
        if text:
            seen.setdefault(text.casefold(), text)
    return " ".join(seen.values()) or None


def extract_query_text(
    body: Mapping[str, Any] | None, params: Mapping[str, str], *, query_path: str | None = None
) -> str | None:
    """The query text of a search request, or None when it has none (match_all, filters only, blank)."""
    if not isinstance(body, Mapping):
        body = {}
    if query_path:
        found = next(resolve_path(body, query_path, index_lists=True), None)
        if isinstance(found, str) and found.strip():
            return " ".join(found.split())
    if body.get("query") is not None:
        return _join(_walk(body["query"]))
    q = params.get("q") if isinstance(params, Mapping) else None
    return _join(lucene_to_text(text) for text in _strings(q))
