"""Which per-index rule applies to a search: patterns, comma lists, wildcards and aliases resolve to one config;
and how many hits the searched indices let one search ask for (`index.max_result_window`)."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cachetools import TTLCache

from .config import Config, IndexRule, RerankSettings

AliasLookup = Callable[[str], Awaitable[list[str]]]  # alias or pattern -> concrete index names
# index expression -> the smallest `index.max_result_window` of the indices it names (None: not known)
ResultWindowLookup = Callable[[str], Awaitable[int | None]]
# Index names and expressions come from clients: what is kept of what the cluster said about them must be bounded.
MAX_CACHED = 4096
_UNKNOWN = -1  # not cached (a cached window may be None: the cluster named none)


@dataclass(frozen=True)
class Resolution:
    settings: RerankSettings | None  # None: the indices disagree, nothing to rerank with
    rule: str  # `defaults`, `indices.N`, or `mixed` when None
    explicit: bool = False  # a rule of its own, not just the defaults


def _index_names(expression: str | None) -> list[str]:
    """`a,b,-c` -> [a, b]; the exclusions only narrow a wildcard and do not change which rule applies."""
    if expression is None:
        return ["_all"]
    names = [n.strip() for n in expression.split(",") if n.strip() and not n.strip().startswith("-")]
    return names or ["_all"]


class IndexResolver:
    def __init__(self, config: Config, lookup_aliases: AliasLookup, ttl_s: float | None = None):
        self._config = config
        self._lookup = lookup_aliases
        ttl = config.upstream.alias_cache_ttl_s if ttl_s is None else ttl_s
        self._cache: TTLCache[str, list[str]] = TTLCache(MAX_CACHED, ttl)

    async def resolve(self, expression: str | None) -> Resolution:
        rules: set[int | None] = set()
        for name in _index_names(expression):
            for concrete in await self._concrete(name):
                rules.add(self._rule_index(concrete))
        if len(rules) > 1:
            return Resolution(None, "mixed")
        (rule,) = rules or {None}
        return self._resolution(rule)

    def _rule_index(self, name: str) -> int | None:
        rule = self._config.rule_for(name.split(":")[-1])  # `cluster:index` (cross-cluster) matches by index name
        return None if rule is None else self._config.indices.index(rule)

    def _resolution(self, rule: int | None) -> Resolution:
        if rule is None:
            return Resolution(self._config.defaults, "defaults")
        chosen: IndexRule = self._config.indices[rule]
        return Resolution(chosen.apply_to(self._config.defaults), f"indices.{rule}", explicit=True)

    async def _concrete(self, name: str) -> list[str]:
        """A name with a rule of its own is taken as is; otherwise it may be an alias or a pattern, asked once per
        TTL."""
        if not self._config.indices or self._config.rule_for(name.split(":")[-1]) is not None:
            return [name]
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        try:
            indices = await self._lookup(name) or [name]
        except Exception:  # the cluster will answer the search itself; resolve by name meanwhile, without caching
            return [name]
        self._cache[name] = indices
        return indices


class ResultWindows:
    """`index.max_result_window` of the indices a search reads (the smallest, for several), asked of the cluster
    once per TTL per index expression; concurrent searches on a cold entry share one lookup. None: unknown (the
    lookup failed or found nothing), which leaves the rerank window as configured."""

    def __init__(self, lookup: ResultWindowLookup, ttl_s: float, max_entries: int = MAX_CACHED):
        self._lookup = lookup
        self._cache: TTLCache[str, int | None] = TTLCache(max_entries, ttl_s)
        self._pending: dict[str, asyncio.Future[int | None]] = {}

    async def limit(self, expression: str | None) -> int | None:
        key = expression or "_all"
        hit = self._cache.get(key, _UNKNOWN)
        if hit is not _UNKNOWN:
            return hit
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(key))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(pending)  # a search that goes away does not cancel the others' lookup

    async def _fetch(self, key: str) -> int | None:
        try:
            value = await self._lookup(key)
        except Exception:  # the cluster will answer the search itself; no clamp meanwhile, and no caching
            return None
        self._cache[key] = value
        return value


def smallest_result_window(settings: object) -> int | None:
    """The smallest `index.max_result_window` in a `GET /{index}/_settings/index.max_result_window?include_defaults`
    answer (flat settings), None when it names none."""
    found: list[int] = []
    if isinstance(settings, dict):
        for index in settings.values():
            if not isinstance(index, dict):
                continue
            for section in ("settings", "defaults"):
                values = index.get(section)
                value = values.get("index.max_result_window") if isinstance(values, dict) else None
                if isinstance(value, (str, int)) and str(value).isdigit():
                    found.append(int(value))
                    break
    return min(found) if found else None
