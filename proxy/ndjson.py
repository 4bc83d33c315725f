"""The `_msearch` wire format: NDJSON pairs of (header, body) lines."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


class NdjsonError(ValueError):
    pass


@dataclass(frozen=True)
class MsearchItem:
    header: dict[str, Any]
    body: dict[str, Any]
    raw_header: bytes
    raw_body: bytes


def parse_msearch(data: bytes) -> list[MsearchItem]:
    lines = [line for line in data.split(b"\n") if line.strip()]
    if len(lines) % 2:
        raise NdjsonError("msearch body must hold pairs of header and body lines")
    items = []
    for raw_header, raw_body in zip(lines[::2], lines[1::2]):
        try:
            header, body = orjson.loads(raw_header), orjson.loads(raw_body)
        except orjson.JSONDecodeError as err:
            raise NdjsonError(str(err)) from None
        if not isinstance(header, dict) or not isinstance(body, dict):
            raise NdjsonError("msearch lines must be JSON objects")
        items.append(MsearchItem(header, body, raw_header, raw_body))
    return items


def item_index(item: MsearchItem, path_index: str | None) -> str | None:
    index = item.header.get("index", path_index)
    if isinstance(index, list):
        return ",".join(str(i) for i in index)
    return index if isinstance(index, str) else path_index


def serialize_msearch(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"
