"""Whether a search can be reranked without changing its meaning, and if not, why (the reason is a header value)."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from rerank import language

from .config import RerankSettings

DEFAULT_SIZE = 10
_INT_MAX = 2**31 - 1  # `from` and `size` are Java ints: the cluster refuses anything larger itself
NO_GATE = (language.ANY,)  # served languages that let every query through, without detecting anything


@dataclass(frozen=True)
class Page:
    from_: int
    size: int


@dataclass(frozen=True)
class Decision:
    rerank: bool
    reason: str | None = None  # why not, when rerank is False


def _int_param(params: Mapping[str, str], body: Mapping[str, Any], key: str, default: int) -> int | None:
    """URL parameters win over the body, as in Elasticsearch; None when the value is not an integer."""
    raw = params.get(key, body.get(key, default))
    if isinstance(raw, bool):
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if 0 <= value <= _INT_MAX else None


def requested_page(body: Mapping[str, Any], params: Mapping[str, str]) -> Page | None:
    from_ = _int_param(params, body, "from", 0)
    size = _int_param(params, body, "size", DEFAULT_SIZE)
    return None if from_ is None or size is None else Page(from_, size)


def _is_score_sort(sort: Any) -> bool:
    """Only a plain descending `_score` sort keeps the ranking semantics reranking replaces."""
    items = sort if isinstance(sort, list) else [sort]
    if len(items) != 1:
        return not items
    item = items[0]
    if item in ("_score", "_score:desc"):
        return True
    if isinstance(item, Mapping) and list(item) == ["_score"]:
        spec = item["_score"]
        order = spec.get("order", "desc") if isinstance(spec, Mapping) else spec
        return bool(order == "desc")
    return False


def _flag(body: Mapping[str, Any], params: Mapping[str, str], key: str) -> bool:
    """A boolean option as the cluster reads it: a URL parameter (`?explain` alone means true) wins over the body."""
    if key in params:
        return params[key].strip().lower() != "false"
    value = body.get(key)
    return value is True or value == "true"


def order_ruled_out(body: Mapping[str, Any], params: Mapping[str, str]) -> str | None:
    """Why the hits' order or `_score` is not the proxy's to change, from what the search asks (None: it is).
    Its order is another than relevance (`sort`, a scroll, a point in time, `search_after`), the client ranks the
    top itself (`rescore`), or the answer reports on the cluster's own scoring (`explain`, `profile`); with
    `stored_fields: _none_` the cluster sends no `_source` to read the hits' text from, nor accepts a request for it."""
    if "scroll" in params or "scroll" in body:
        return "scroll"
    if "pit" in body:
        return "pit"
    if "search_after" in body:
        return "search-after"
    sort = params.get("sort", body.get("sort"))
    if sort is not None and not _is_score_sort(sort.split(",") if isinstance(sort, str) else sort):
        return "sort"
    if body.get("rescore"):
        return "rescore"
    if _flag(body, params, "explain"):
        return "explain"
    if body.get("profile") is True or body.get("profile") == "true":
        return "profile"
    stored = params.get("stored_fields", body.get("stored_fields"))
    if stored == "_none_" or (isinstance(stored, list) and "_none_" in stored):
        return "stored-fields-none"
    return None


# The options `order_ruled_out` reads, as they appear in a template's source that is not JSON (mustache sections).
_TEMPLATE_OPTIONS = re.compile(r'"(scroll|pit|search_after|sort|rescore|explain|profile|stored_fields)"\s*:')
_OPTION_REASONS = {"search_after": "search-after", "stored_fields": "stored-fields-none"}


def template_order_ruled_out(source: Any) -> str | None:
    """`order_ruled_out` for an inline search template's `source` (an object, or a string the cluster renders):
    a string that is not JSON as it stands is judged by the options it names at all, whatever their values."""
    if isinstance(source, str):
        try:
            source = orjson.loads(source)
        except orjson.JSONDecodeError:
            found = _TEMPLATE_OPTIONS.search(source)
            return _OPTION_REASONS.get(found.group(1), found.group(1)) if found else None
    return order_ruled_out(source, {}) if isinstance(source, Mapping) else None


def decide(
    body: Mapping[str, Any] | None,
    params: Mapping[str, str],
    settings: RerankSettings | None,
    *,
    force: str | None,
    query_text: str | None,
    off_reason: str = "disabled",
    languages: Sequence[str] = NO_GATE,
) -> Decision:
    """The client's explicit wish first, then what the request itself rules out, then configuration.
    `settings` None means the searched indices have different rules; `off_reason` names a disabled config;
    `languages` are those the search's model serves (see `served_languages`)."""
    if force == "off":
        return Decision(False, "header-off")
    if body is None:
        body = {}
    ruled_out = order_ruled_out(body, params)
    if ruled_out is not None:
        return Decision(False, ruled_out)
    page = requested_page(body, params)
    if page is None:
        return Decision(False, "bad-page")
    if page.size == 0:
        return Decision(False, "size-0")
    if settings is None:
        return Decision(False, "mixed-index-config")
    if not settings.enabled and force != "on":
        return Decision(False, off_reason)
    if page.from_ >= settings.window:
        return Decision(False, "page-past-window")
    if not query_text:
        return Decision(False, "no-query-text")
    if force != "on" and settings.language_gate and language.outside(query_text, languages):
        return Decision(False, "language")
    return Decision(True)


def served_languages(settings: RerankSettings | None, model_languages: Sequence[str]) -> Sequence[str]:
    """The query languages a search is reranked in: the index's own `languages`, else its model's; `any` when the
    gate is off for it (then nothing is detected)."""
    if settings is None or not settings.language_gate:
        return NO_GATE
    return settings.languages or model_languages


def needs_detector(languages: Sequence[str]) -> bool:
    """Whether deciding for `languages` runs the language detector before it has loaded (`load_detector`: about
    0.6 s, once per process, best run off the event loop)."""
    return language.gated(languages) and not language.loaded()


load_detector = language.load
