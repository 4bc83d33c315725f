"""The `_msearch` wire format: NDJSON pairs of (header, body) lines, framed exactly as the cluster frames them.

Measured on Elasticsearch 8.19 and OpenSearch 2.19 (tests/unit/test_ndjson.py names each rule):

- The body is cut at every `\\n`; it must end with one, else the whole request is refused (400).
- Lines alternate header, body. A header line that is empty, JSON whitespace only (space, tab, `\\r`) or `null`
  means "no metadata" (the path's index). A body line must hold a JSON object.
- A header left without its body at the end is parsed (a bad one fails the request) and then ignored.
- An empty line at byte 0 is where the two clusters differ: Elasticsearch 8 reads it as an empty header;
  OpenSearch 2, and Elasticsearch under `compatible-with=7`, skip it. Only the caller can know which applies.
- Duplicate keys, trailing tokens after the object, `[]` headers and the like: the cluster refuses some, accepts
  others (the two flavours disagree on some); the proxy cannot tell, so it does not rewrite such a request.

`parse_msearch` raises `NdjsonError` for anything the cluster might read differently from us; the caller then
relays the client's bytes untouched and the cluster answers for itself. Items it returns keep their raw lines so
that `serialize_msearch` reproduces the same framing with only the rewritten bodies changed.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson

# What Jackson (both clusters' JSON parser) takes for whitespace between tokens; `\n` never occurs inside a line.
_JSON_WHITESPACE = b" \t\r"

LeadingEmptyLine = Literal["header", "skip"]


class NdjsonError(ValueError):
    pass


class TooDeep(NdjsonError):
    """Nested deeper than the proxy reads (orjson: 1024 levels); the cluster may still accept it (OpenSearch does)."""


@dataclass(frozen=True)
class MsearchItem:
    header: dict[str, Any]
    body: dict[str, Any]
    raw_header: bytes  # as sent; the first item's includes a skipped leading empty line (`\n`), so framing survives
    raw_body: bytes


# An integer past 64 bits (20 digits, or a minus and 19) orjson reads as a float, so a `term` on it would match
# nothing and a `_source` holding it would come back rounded. A document that may hold one (a digit run that long
# anywhere, strings included: rare) is read again by the stdlib parser, which keeps every integer exact.
_WIDE_INT = re.compile(rb"\d{20}|-\d{19}")


def loads(raw: bytes) -> Any:
    """JSON, every integer exact; raises `NdjsonError` (`TooDeep` past the depth either parser reads)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        if "depth limit" in str(err):
            raise TooDeep(str(err)) from None
        raise NdjsonError(str(err)) from None
    if _WIDE_INT.search(raw):
        try:
            return json.loads(raw)
        except RecursionError:  # the stdlib parser recurses, and stops short of orjson's 1024 levels
            raise TooDeep("an integer past 64 bits, nested too deep to read exactly") from None
    return value


def strict_loads(raw: bytes) -> Any:
    """JSON as the cluster reads it, or `NdjsonError`: also refuses duplicate keys, which the cluster rejects and
    orjson silently collapses (a rewritten body would then be accepted where the client's was refused)."""
    value = loads(raw)
    if b'"' in raw and _has_duplicate_keys(raw, value):
        raise NdjsonError("duplicate key in a JSON object")
    return value


# A JSON string and what follows it: a `:` makes it an object member's key. Possessive, so it never backtracks.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"[ \t\n\r]*+(:?)')


def _has_duplicate_keys(raw: bytes, value: Any) -> bool:
    found = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        obj = dict(items)
        found = found or len(obj) != len(items)
        return obj

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except RecursionError:  # the stdlib parser recurses, and stops short of orjson's 1024 levels
        # Slower, but flat: `raw` (valid JSON) has as many members as its parsed objects have keys, unless
        # some object repeats one.
        return _STRING.findall(raw).count(b":") != _key_count(value)
    return found


def _key_count(value: Any) -> int:
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def dumps(value: Any, *, pretty: bool = False) -> bytes:
    """`orjson.dumps`, also for values nested deeper than it writes (it stops at 255 levels, where it reads 1024):
    the same bytes, built level by level without recursion; and for integers past 64 bits (`loads` keeps them), by
    the stdlib, in the same layout. `pretty`: orjson's `OPT_INDENT_2` layout."""
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 if pretty else 0)
    except orjson.JSONEncodeError as err:
        if "64-bit" in str(err):  # RecursionError past the stdlib's depth: the caller's to handle
            return json.dumps(value, ensure_ascii=False, indent=2 if pretty else None,
                              separators=(",", ": ") if pretty else (",", ":")).encode()
        return _dumps_deep(value, pretty)


_ORJSON_DEPTH = 200  # a part this deep or less orjson writes whole (it stops somewhat short of 255 levels)


def _dumps_deep(value: Any, pretty: bool) -> bytes:
    option = orjson.OPT_INDENT_2 if pretty else 0
    depths = _depths(value)
    out: list[bytes] = []
    # Each frame: the items still to write of one open container, whether it is an object, its nesting level.
    stack: list[tuple[Iterator[Any], bool, int]] = []

    def write(item: Any, level: int) -> None:
        """One value: a scalar or a part shallow enough for orjson, written whole; else the container opened."""
        if not isinstance(item, (dict, list)) or depths.get(id(item), 0) <= _ORJSON_DEPTH:
            data = orjson.dumps(item, option=option)
            out.append(data.replace(b"\n", b"\n" + b"  " * level) if pretty and level else data)
            return
        is_object = isinstance(item, dict)
        out.append(b"{" if is_object else b"[")
        stack.append((iter(item.items()) if isinstance(item, dict) else iter(item), is_object, level + 1))

    write(value, 0)
    first = True  # the next item is the first of its container
    while stack:
        items, is_object, level = stack[-1]
        entry = next(items, _END)
        if entry is _END:
            stack.pop()
            if pretty:
                out.append(b"\n" + b"  " * (level - 1))
            out.append(b"}" if is_object else b"]")
            first = False
            continue
        if not first:
            out.append(b",")
        if pretty:
            out.append(b"\n" + b"  " * level)
        if is_object:
            key, entry = entry
            out.append(orjson.dumps(key) + (b": " if pretty else b":"))
        depth = len(stack)
        write(entry, level)
        first = len(stack) > depth
    return b"".join(out)


def _depths(value: Any) -> dict[int, int]:
    """How deep each non-empty container under `value` nests (by `id`), found without recursion."""
    depths: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, children_done = stack.pop()
        if not isinstance(node, (dict, list)) or not node:
            continue
        children = node.values() if isinstance(node, dict) else node
        if children_done:
            depths[id(node)] = 1 + max((depths.get(id(child), 0) for child in children), default=0)
        else:
            stack.append((node, True))
            stack.extend((child, False) for child in children if isinstance(child, (dict, list)))
    return depths


_END: Any = object()


def _header(raw: bytes) -> dict[str, Any]:
    if not raw.strip(_JSON_WHITESPACE):
        return {}
    header = strict_loads(raw)
    if header is None:
        return {}
    if not isinstance(header, dict):
        raise NdjsonError("msearch header lines must be JSON objects")
    return header


def _body(raw: bytes) -> dict[str, Any]:
    if not raw.strip(_JSON_WHITESPACE):
        raise NdjsonError("msearch body line is empty")
    body = strict_loads(raw)
    if not isinstance(body, dict):
        raise NdjsonError("msearch body lines must be JSON objects")
    return body


def _lines(data: bytes, leading_empty_line: LeadingEmptyLine | None) -> tuple[bytes, list[bytes]]:
    """The prefix the cluster skips and the newline-terminated lines after it."""
    if not data.endswith(b"\n"):
        raise NdjsonError("The msearch request must be terminated by a newline [\\n]")
    prefix = b""
    if data.startswith(b"\n"):
        if leading_empty_line is None:
            raise NdjsonError("a leading empty line is a header on Elasticsearch 8, skipped on OpenSearch")
        if leading_empty_line == "skip":
            prefix, data = b"\n", data[1:]
    return prefix, data[:-1].split(b"\n") if data else []


def parse_msearch(data: bytes, *, leading_empty_line: LeadingEmptyLine | None = None) -> list[MsearchItem]:
    """The (header, body) items the cluster reads from `data`.

    `leading_empty_line`: how the cluster reads an empty line at byte 0: "header" (Elasticsearch 8), "skip"
    (OpenSearch 2, Elasticsearch with `compatible-with=7`); None (unknown): such a body raises `NdjsonError`."""
    prefix, lines = _lines(data, leading_empty_line)
    items = []
    for i in range(0, len(lines) - 1, 2):
        raw_header, raw_body = lines[i], lines[i + 1]
        header = _header(raw_header)
        items.append(MsearchItem(header, _body(raw_body), prefix + raw_header if i == 0 else raw_header, raw_body))
    if len(lines) % 2 and lines[-1].strip(_JSON_WHITESPACE):
        # The cluster parses a last header that has no body (a bad one fails the request), then drops it.
        raise NdjsonError("msearch header line without a body")
    if not items:
        raise NdjsonError("no requests added")
    return items


def item_index(item: MsearchItem, path_index: str | None) -> str | None:
    index = item.header.get("index", path_index)
    if isinstance(index, list):
        return ",".join(str(i) for i in index)
    return index if isinstance(index, str) else path_index


def serialize_msearch(lines: list[bytes]) -> bytes:
    """Header and body lines (an item's `raw_header` as it is) framed as the cluster reads them."""
    return b"\n".join(lines) + b"\n"
