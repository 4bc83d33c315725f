"""The client's view of a search response: `_source` filtering and `filter_path`, exactly as the cluster shapes them.

The proxy asks the cluster for a wider response than the client did, so it must re-apply the client's view itself.
Everything here mirrors Elasticsearch 8.19 and OpenSearch 2.19 (checked against real nodes; the expectations in
tests/unit/test_view.py are their outputs):

* `filter_path` and most `_source` filtering use one path-tree matcher (ES `FilterPath`) driven by Jackson's
  token-filter rules: an include keeps a matched value whole and the path down to it, an exclude drops it; a
  container whose contents were all filtered away disappears, while one that was empty to begin with survives an
  exclude but never an include. `*` matches within one name, `**` any number of levels, arrays are transparent.
  `filter_path` applies its includes, then its excludes; `_source` its excludes, then its includes.
* `_source` filtering switches to ES's map filter (`XContentMapValues.filter`, glob automata where `*` also
  crosses dots) when an exclude holds a `*` or when the request asks for `fields` (the cluster has parsed the
  source by then). That filter keeps an emptied object whose own path was matched, drops emptied array elements,
  and emits the keys of every object it rebuilds in Java `HashMap` order, which `_java_hash_order` reproduces.
* OpenSearch map-filters every filtered `_source`, parsed into hash maps at every level, and its `filter_path`
  excludes drop empty containers too.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class SourceFilter:
    """The client's `_source` request, as the cluster resolved it."""

    enabled: bool = True  # False: hits carry no `_source` key at all
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    # The request asks for `fields`, so Elasticsearch has parsed the source before filtering it (module docstring).
    map_filtering: bool = False

    @property
    def is_identity(self) -> bool:
        return self.enabled and not self.includes and not self.excludes


def source_filter_from_request(
    body_source: Any, params: Mapping[str, str], stored_fields_given: bool, *, fields_given: bool = False
) -> SourceFilter:
    """The `_source` view of one search request.

    `body_source`: the body's `_source` (None when absent). URL `_source`/`_source_includes`/`_source_excludes`
    replace the body's setting as a whole, as in ES. `stored_fields_given`: the request names `stored_fields` or
    `script_fields`, which makes the cluster drop the implicit `_source`. `fields_given`: the body's `fields` is a
    non-empty list (exact when it names mapped fields; the cluster does not parse the source for unmapped or
    metadata fields only). Raises ValueError on a `_source` the cluster rejects with a 400.
    """
    from_body = _source_from_body(body_source)  # parsed first: a bad body fails even when params override it
    enabled, includes, excludes = _source_from_params(params) or from_body or (not stored_fields_given, [], [])
    return SourceFilter(enabled, tuple(includes), tuple(excludes), map_filtering=fields_given)


def _java_split_commas(value: str) -> list[str]:
    """Java's `value.split(",")`: no trimming, trailing empty parts dropped (ES `splitStringByCommaToArray`)."""
    parts = value.split(",") if value else []
    while parts and not parts[-1]:
        parts.pop()
    return parts


def _source_from_params(params: Mapping[str, str]) -> tuple[bool, list[str], list[str]] | None:
    source, inc, exc = params.get("_source"), params.get("_source_includes"), params.get("_source_excludes")
    if source is None and inc is None and exc is None:
        return None
    includes: list[str] = []
    enabled = source != "false"  # ES reads only the exact words `true` and `false` as booleans
    if source not in (None, "true", "false"):
        includes = _java_split_commas(source)
    if inc is not None:
        includes = _java_split_commas(inc)
    return enabled, includes, _java_split_commas(exc) if exc is not None else []


def _string_list(value: Any, what: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"[_source] {what} must be a string or an array of strings")
    return values


def _source_from_body(value: Any) -> tuple[bool, list[str], list[str]] | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value, [], []
    if isinstance(value, (str, list)):
        return True, _string_list(value, "value"), []
    if isinstance(value, dict):
        includes: list[str] = []
        excludes: list[str] = []
        for key, item in value.items():
            if key in ("includes", "include"):
                includes = _string_list(item, key)
            elif key in ("excludes", "exclude"):
                excludes = _string_list(item, key)
            elif key != "exclude_vectors":  # only touches dense vectors, which the proxy never widens
                raise ValueError(f"[_source] unknown key [{key}]")
        return True, includes, excludes
    raise ValueError("[_source] must be a boolean, a string, an array or an object")


def filter_source(source: dict[str, Any], flt: SourceFilter, *, opensearch: bool = False) -> dict[str, Any]:
    """The `_source` of a hit as the cluster returns it under `flt` (`{}` when nothing is left).

    `opensearch`: the upstream is OpenSearch (2.x), which always map-filters a source parsed into hash maps.
    """
    if not flt.includes and not flt.excludes:
        return source
    if opensearch or flt.map_filtering or any("*" in e for e in flt.excludes):
        include, exclude = _automaton(flt.includes or ("*",)), _automaton(flt.excludes)
        return _map_filter(_java_hash_order_deep(source) if opensearch else source, include, exclude)
    value = _PathFilter(inclusive=False, dots=True, keeps_empty=True).apply(source, flt.excludes)
    value = _PathFilter(inclusive=True, dots=True, keeps_empty=False).apply(value, flt.includes)
    return {} if value is _DROPPED else value


def apply_filter_path(response: Any, filter_path: str, *, opensearch: bool = False) -> Any:
    """`response` as the cluster renders it for `?filter_path=...` (`{}` when nothing matches).

    `opensearch`: the upstream is OpenSearch (2.x), whose excludes also drop containers that were empty already.
    Error responses are never filtered by the cluster: do not call this for them.
    """
    tokens = [t for t in (_java_trim(t) for t in filter_path.split(",")) if t]
    includes = [t for t in tokens if not t.startswith("-")]
    excludes = [t[1:] for t in tokens if t.startswith("-")]
    value = _PathFilter(inclusive=True, dots=False, keeps_empty=False).apply(response, includes)
    value = _PathFilter(inclusive=False, dots=False, keeps_empty=not opensearch).apply(value, excludes)
    return {} if value is _DROPPED else value


# ---- the path tree and its walk (ES FilterPath + FilterPathBasedFilter + Jackson's filtering delegates) ----

def _java_trim(text: str) -> str:
    return text.strip("".join(map(chr, range(33))))  # Java's String.trim(): every char <= ' '


@dataclass
class _Node:
    """One level of the compiled expressions; `final` means an expression ends here."""

    pattern: str = ""
    final: bool = False
    children: dict[str, _Node] = field(default_factory=dict)

    @property
    def is_double_wildcard(self) -> bool:
        return self.pattern == "**"

    def insert(self, expression: str) -> None:
        # Split at the first dot not escaped as `\.`; a leading dot does not split, as in ES.
        i, escaped = 0, False
        while i < len(expression) and expression[i] != ".":
            if expression.startswith("\\.", i):
                i, escaped = i + 1, True
            i += 1
        split = 0 < i < len(expression)
        name = expression[:i] if split else expression
        if escaped:  # ES's replaceAll("\\\\.", "."): a backslash and whatever follows it become a dot
            name = re.sub(r"\\.", ".", name, flags=re.S)
        if not split:
            self.children[name] = _Node(name, final=True)  # a shorter expression wins over longer ones
            return
        child = self.children.setdefault(name, _Node(name))
        if not child.final:
            child.insert(expression[i + 1:])

    def matches(self, name: str, following: list[_Node], dots: bool) -> bool:
        """True when an expression ends at `name`; else collects in `following` the nodes for its contents."""
        if dots:  # a source field named "a.b" is reached by the expression `a.b` as well as by `a` then `b`
            i = name.find(".")
            if 0 < i < len(name) - 1:
                after_prefix: list[_Node] = []
                if self.matches(name[:i], after_prefix, True):
                    return True
                return any(node.matches(name[i + 1:], following, True) for node in after_prefix)
        for child in self.children.values():
            if child.pattern == name or ("*" in child.pattern and _glob(child.pattern).fullmatch(name)):
                if child.final:
                    return True
                following.append(child)
        if self.is_double_wildcard:
            following.append(self)
        return False


@lru_cache(maxsize=512)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(map(re.escape, pattern.split("*"))), re.S)


_DROPPED: Any = object()


@dataclass(frozen=True)
class _PathFilter:
    """One filtering pass over a value: ES's FilterPathBasedFilter as Jackson's filtering delegates apply it."""

    inclusive: bool  # includes keep what matches, excludes drop it
    dots: bool  # `_source` filtering: a field named "a.b" is also reached as `a` then `b`
    keeps_empty: bool  # keep a container that was empty to begin with (ES 8 excludes do)

    def apply(self, value: Any, expressions: Sequence[str]) -> Any:
        if not expressions or value is _DROPPED:  # no such filter: the value passes untouched
            return value
        root = _Node()
        for expression in filter(None, map(_java_trim, expressions)):
            root.insert(expression)
        return self._walk(value, [root])

    def _walk(self, value: Any, nodes: list[_Node]) -> Any:
        """`value` as seen through the (not yet decided) filter `nodes`, or _DROPPED."""
        if isinstance(value, dict):
            out: Any = {}
            for key, item in value.items():
                following: list[_Node] = []
                if any(node.matches(key, following, self.dots) for node in nodes):
                    if self.inclusive:
                        out[key] = item
                elif following:
                    if (filtered := self._walk(item, following)) is not _DROPPED:
                        out[key] = filtered
                elif not self.inclusive:
                    out[key] = item
        elif isinstance(value, list):  # arrays are transparent: each element sees the array's own filter
            out = [f for f in (self._walk(item, nodes) for item in value) if f is not _DROPPED]
        else:
            return _DROPPED if self.inclusive else value
        # A container left empty is dropped, unless it was empty to begin with and this pass keeps those.
        return out if out or (self.keeps_empty and not value) else _DROPPED


# ---- ES's map-based source filter (XContentMapValues.filter) ----

_State = frozenset[tuple[int, int]]  # the automaton's positions: (pattern, step) pairs


class _Automaton:
    """ES's source-filter automaton: each glob `p` (only `*` is special) also matches `p.` + anything.

    A state is the set of (glob, position) pairs still alive; the empty set is ES's dead state -1.
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self._globs = tuple(g for p in patterns for g in (p, p + ".*"))
        self._moves: dict[tuple[frozenset[tuple[int, int]], str], frozenset[tuple[int, int]]] = {}
        self.start = self._close((i, 0) for i in range(len(self._globs)))

    def _close(self, pairs: Iterable[tuple[int, int]]) -> frozenset[tuple[int, int]]:
        closed = set()
        for i, pos in pairs:
            closed.add((i, pos))
            while pos < len(self._globs[i]) and self._globs[i][pos] == "*":  # `*` may match nothing
                pos += 1
                closed.add((i, pos))
        return frozenset(closed)

    def step(self, state: frozenset[tuple[int, int]], text: str) -> frozenset[tuple[int, int]]:
        for ch in text:
            if not state:
                break
            if (state, ch) not in self._moves:  # memoised: the same few states recur for every key
                self._moves[state, ch] = self._close(
                    (i, pos if self._globs[i][pos] == "*" else pos + 1)
                    for i, pos in state
                    if pos < len(self._globs[i]) and self._globs[i][pos] in ("*", ch)
                )
            state = self._moves[state, ch]
        return state

    @lru_cache(maxsize=4096)  # noqa: B019  # automatons are few and cached themselves (compile_filter's lru_cache)
    def accepts(self, state: frozenset[tuple[int, int]]) -> bool:
        return any(pos == len(self._globs[i]) for i, pos in state)


@lru_cache(maxsize=256)
def _automaton(patterns: tuple[str, ...]) -> _Automaton:  # shared across hits, so its memoised moves are too
    return _Automaton(patterns)


_MATCH_ALL = _automaton(("*",))


def _map_filter(
    source: dict[str, Any], include: _Automaton, exclude: _Automaton,
    include_state: _State | None = None, exclude_state: _State | None = None,
) -> dict[str, Any]:
    include_state = include.start if include_state is None else include_state
    exclude_state = exclude.start if exclude_state is None else exclude_state
    out: dict[str, Any] = {}
    for key, value in source.items():
        inc = include.step(include_state, key)
        exc = exclude.step(exclude_state, key)
        if not inc or exclude.accepts(exc):
            continue
        sub_aut, sub_inc = include, inc
        if include.accepts(inc):
            if not exclude.step(exc, "."):  # no exclude can reach inside: keep the value as it is
                out[key] = value
                continue
            sub_aut, sub_inc = _MATCH_ALL, _MATCH_ALL.start
        if isinstance(value, dict):
            sub_inc = sub_aut.step(sub_inc, ".")
            if not sub_inc:
                continue
            filtered: Any = _map_filter(value, sub_aut, exclude, sub_inc, exclude.step(exc, "."))
        elif isinstance(value, list):
            filtered = _map_filter_list(value, sub_aut, sub_inc, exclude, exc)
        else:
            if include.accepts(inc):  # (an accepted exclude was skipped above)
                out[key] = value
            continue
        if include.accepts(inc) or filtered:
            out[key] = filtered
    return {key: out[key] for key in _java_hash_order(list(out))}


def _map_filter_list(
    values: list[Any], include: _Automaton, include_state: _State, exclude: _Automaton, exclude_state: _State
) -> list[Any]:
    out = []
    for value in values:
        if isinstance(value, dict):
            filtered: Any = _map_filter(
                value, include, exclude, include.step(include_state, "."), exclude.step(exclude_state, "."))
        elif isinstance(value, list):
            filtered = _map_filter_list(value, include, include_state, exclude, exclude_state)
        else:
            if include.accepts(include_state):
                out.append(value)
            continue
        if filtered:  # emptied (or empty) elements are dropped
            out.append(filtered)
    return out


def _java_hash_order(keys: list[str]) -> list[str]:
    """The iteration order of a java.util.HashMap<String, ?> filled with `keys` in this order.

    Buckets of the final table in index order, insertion order within a bucket (tree bins, which need 8+ colliding
    keys, are not modelled).
    """
    capacity = 16
    while len(keys) > capacity * 3 // 4:
        capacity *= 2

    def bucket(key: str) -> int:
        h = 0
        utf16 = key.encode("utf-16-be")
        for i in range(0, len(utf16), 2):
            h = (31 * h + (utf16[i] << 8 | utf16[i + 1])) & 0xFFFFFFFF
        return (h ^ (h >> 16)) & (capacity - 1)

    return sorted(keys, key=bucket)  # sorted() is stable: insertion order within a bucket


def _java_hash_order_deep(value: Any) -> Any:
    """`value` as parsed into java.util.HashMaps at every level (how OpenSearch reads a source to filter it)."""
    if isinstance(value, dict):
        return {key: _java_hash_order_deep(value[key]) for key in _java_hash_order(list(value))}
    if isinstance(value, list):
        return [_java_hash_order_deep(item) for item in value]
    return value
