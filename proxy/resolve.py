"""Which per-index rule applies to a search: patterns, comma lists, wildcards and aliases resolve to one config."""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .config import Config, IndexRule, RerankSettings

AliasLookup = Callable[[str], Awaitable[list[str]]]  # alias or pattern -> concrete index names


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
        self._ttl = config.upstream.alias_cache_ttl_s if ttl_s is None else ttl_s
        self._cache: dict[str, tuple[float, list[str]]] = {}

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
        """A name with a rule of its own is taken as is; otherwise it may be an alias or a pattern, asked once per TTL."""
        if not self._config.indices or self._config.rule_for(name.split(":")[-1]) is not None:
            return [name]
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit and now - hit[0] < self._ttl:
            return hit[1]
        try:
            indices = await self._lookup(name) or [name]
        except Exception:  # the cluster will answer the search itself; resolve by name meanwhile, without caching
            return [name]
        self._cache[name] = (now, indices)
        return indices
