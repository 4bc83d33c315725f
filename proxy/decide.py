"""Whether a search can be reranked without changing its meaning, and if not, why (the reason is a header value)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
    if "scroll" in params or "scroll" in body:
        return Decision(False, "scroll")
    if "pit" in body:
        return Decision(False, "pit")
    if "search_after" in body:
        return Decision(False, "search-after")
    sort = params.get("sort", body.get("sort"))
    if sort is not None and not _is_score_sort(sort.split(",") if isinstance(sort, str) else sort):
        return Decision(False, "sort")
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
