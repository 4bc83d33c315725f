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
from dataclasses import dataclass
from typing import Any, Literal

import orjson

# What Jackson (both clusters' JSON parser) takes for whitespace between tokens; `\n` never occurs inside a line.
_JSON_WHITESPACE = b" \t\r"

LeadingEmptyLine = Literal["header", "skip"]


class NdjsonError(ValueError):
    pass


@dataclass(frozen=True)
class MsearchItem:
    header: dict[str, Any]
    body: dict[str, Any]
    raw_header: bytes  # as sent; the first item's includes a skipped leading empty line (`\n`), so framing survives
    raw_body: bytes


def strict_loads(raw: bytes) -> Any:
    """JSON as the cluster reads it, or `NdjsonError`: also refuses duplicate keys, which the cluster rejects and
    orjson silently collapses (a rewritten body would then be accepted where the client's was refused)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise NdjsonError(str(err)) from None
    if b'"' in raw and _has_duplicate_keys(raw):
        raise NdjsonError("duplicate key in a JSON object")
    return value


def _has_duplicate_keys(raw: bytes) -> bool:
    found = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        obj = dict(items)
        found = found or len(obj) != len(items)
        return obj

    json.loads(raw, object_pairs_hook=pairs)
    return found


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
