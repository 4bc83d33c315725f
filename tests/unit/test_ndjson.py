"""`_msearch` framing as Elasticsearch 8.19 and OpenSearch 2.19 read it (each rule checked against both clusters by
tests/integration/test_relay_exact.py::test_msearch_parser_agrees_with_cluster)."""
from __future__ import annotations

import json
import sys

import orjson
import pytest

from proxy.ndjson import (
    MsearchItem,
    NdjsonError,
    TooDeep,
    dumps,
    item_index,
    loads,
    parse_msearch,
    serialize_msearch,
    strict_loads,
)

H = b'{"index":"idx"}'
Q = b'{"query":{"match":{"title":"protein"}}}'


def reserialized(items: list[MsearchItem]) -> bytes:
    return serialize_msearch([line for item in items for line in (item.raw_header, item.raw_body)])


def test_pairs_of_header_and_body_lines() -> None:
    items = parse_msearch(H + b"\n" + Q + b"\n" + b"{}\n" + Q + b"\n")
    assert [(i.header, i.body) for i in items] == [({"index": "idx"}, {"query": {"match": {"title": "protein"}}}),
                                                   ({}, {"query": {"match": {"title": "protein"}}})]


def test_missing_trailing_newline_is_refused_as_the_cluster_refuses_it() -> None:
    with pytest.raises(NdjsonError, match="terminated by a newline"):
        parse_msearch(H + b"\n" + Q)


@pytest.mark.parametrize("data", [b"", b"\n", H + b"\n"], ids=["empty", "newline-only", "header-only"])
def test_no_item_is_refused(data: bytes) -> None:
    with pytest.raises(NdjsonError):
        parse_msearch(data, leading_empty_line="header")


@pytest.mark.parametrize("header", [b"", b" ", b"\t", b"\r", b"null", b" null\r"])
def test_empty_whitespace_or_null_header_after_the_first_byte_means_no_metadata(header: bytes) -> None:
    items = parse_msearch(H + b"\n" + Q + b"\n" + header + b"\n" + Q + b"\n")
    assert [i.header for i in items] == [{"index": "idx"}, {}]
    assert items[1].raw_header == header


def test_whitespace_header_on_the_first_line_means_no_metadata() -> None:
    assert parse_msearch(b" \n" + Q + b"\n")[0].header == {}


def test_form_feed_is_not_json_whitespace() -> None:
    with pytest.raises(NdjsonError):
        parse_msearch(H + b"\n" + Q + b"\n\x0c\n" + Q + b"\n")


def test_leading_empty_line_is_ambiguous_unless_the_flavour_is_known() -> None:
    with pytest.raises(NdjsonError, match="leading empty line"):
        parse_msearch(b"\n" + Q + b"\n")


def test_leading_empty_line_is_an_empty_header_on_elasticsearch_8() -> None:
    items = parse_msearch(b"\n" + Q + b"\n", leading_empty_line="header")
    assert [(i.header, i.raw_header) for i in items] == [({}, b"")]
    assert reserialized(items) == b"\n" + Q + b"\n"


def test_leading_empty_line_is_skipped_on_opensearch_and_kept_when_reserialised() -> None:
    items = parse_msearch(b"\n" + H + b"\n" + Q + b"\n", leading_empty_line="skip")
    assert [i.header for i in items] == [{"index": "idx"}]
    assert reserialized(items) == b"\n" + H + b"\n" + Q + b"\n"


def test_skipped_leading_line_then_empty_header_keeps_both_newlines() -> None:
    items = parse_msearch(b"\n\n" + Q + b"\n", leading_empty_line="skip")
    assert [i.header for i in items] == [{}]
    assert reserialized(items) == b"\n\n" + Q + b"\n"


def test_two_leading_empty_lines_on_elasticsearch_8_give_an_empty_body() -> None:
    with pytest.raises(NdjsonError, match="empty"):
        parse_msearch(b"\n\n" + Q + b"\n", leading_empty_line="header")


@pytest.mark.parametrize("body", [b"", b" ", b"\r"])
def test_empty_body_line_is_refused(body: bytes) -> None:
    with pytest.raises(NdjsonError, match="empty"):
        parse_msearch(H + b"\n" + body + b"\n")


def test_blank_line_between_items_shifts_the_pairs_as_the_cluster_does() -> None:
    """The blank line is read as an empty header, the next header as its body, the query as a dangling header."""
    with pytest.raises(NdjsonError, match="without a body"):
        parse_msearch(H + b"\n" + Q + b"\n\n" + H + b"\n" + Q + b"\n")


def test_one_extra_trailing_newline_is_a_dangling_empty_header_and_ignored() -> None:
    items = parse_msearch(H + b"\n" + Q + b"\n\n")
    assert len(items) == 1


@pytest.mark.parametrize("dangling", [H, b"null", b"{bad", b'{"foo":1}'])
def test_non_blank_dangling_header_is_left_to_the_cluster(dangling: bytes) -> None:
    """The cluster parses it (a bad one fails the whole request) and drops it: the proxy does not guess."""
    with pytest.raises(NdjsonError):
        parse_msearch(H + b"\n" + Q + b"\n" + dangling + b"\n")


def test_crlf_line_ends_are_json_whitespace_and_kept_raw() -> None:
    data = H + b"\r\n" + Q + b"\r\n\r\n" + Q + b"\r\n"
    items = parse_msearch(data)
    assert [i.header for i in items] == [{"index": "idx"}, {}]
    assert reserialized(items) == data


@pytest.mark.parametrize("line", [b'{"index":"a","index":"b"}', b'{"a":{"b":1,"b":2}}'])
def test_duplicate_keys_are_refused_as_the_cluster_refuses_them(line: bytes) -> None:
    with pytest.raises(NdjsonError, match="duplicate"):
        parse_msearch(line + b"\n" + Q + b"\n")
    with pytest.raises(NdjsonError, match="duplicate"):
        parse_msearch(H + b"\n" + line + b"\n")


@pytest.mark.parametrize("line", [Q + b' {"a":1}', b"[]", b'"idx"', b"{/*c*/}", b"1"])
def test_header_the_flavours_read_differently_or_orjson_cannot_is_left_to_the_cluster(line: bytes) -> None:
    with pytest.raises(NdjsonError):
        parse_msearch(line + b"\n" + Q + b"\n")


@pytest.mark.parametrize("line", [b"[1]", b"null", Q + b' {"a":1}'])
def test_body_that_is_not_one_json_object_is_left_to_the_cluster(line: bytes) -> None:
    with pytest.raises(NdjsonError):
        parse_msearch(H + b"\n" + line + b"\n")


def test_reserialising_unchanged_items_gives_the_clients_bytes() -> None:
    data = H + b"\n" + Q + b"\n \n" + Q + b"\n\n" + Q + b"\n"
    assert reserialized(parse_msearch(data)) == data


def test_item_index_from_header_else_path() -> None:
    items = parse_msearch(b'{"index":["a","b"]}\n{}\n\n{}\n{"index":"c"}\n{}\n')
    assert [item_index(i, "p") for i in items] == ["a,b", "p", "c"]


def test_strict_loads_keeps_orjsons_values() -> None:
    assert strict_loads(b'{"a":[1,2.5,"x",null]}') == {"a": [1, 2.5, "x", None]}


# ---- nesting depth: what orjson reads (1024 levels) and writes (fewer than 255) ----

def nested_object(depth: int, leaf: bytes = b"{}") -> bytes:
    return b'{"k":' * (depth - 1) + leaf + b"}" * (depth - 1)


def test_a_body_deeper_than_orjson_reads_is_too_deep_not_malformed() -> None:
    strict_loads(nested_object(1024))
    with pytest.raises(TooDeep):
        strict_loads(nested_object(1025))


@pytest.mark.parametrize("leaf,duplicate", [
    (b'{"a":1,"a":2}', True),
    (b'{"a":"x\\":","b":"\\\\"}', False),  # escaped quotes and colons inside strings are no keys
    (b'{"a":"x\\":","a":"\\\\"}', True),
    (b'{"a" :1, "b"\t:[{"a":1}]}', False),
])
def test_duplicate_keys_are_found_past_the_depth_the_stdlib_parser_recurses_to(leaf: bytes, duplicate: bool) -> None:
    raw = nested_object(1000, leaf)
    if duplicate:
        with pytest.raises(NdjsonError, match="duplicate key"):
            strict_loads(raw)
    else:
        strict_loads(raw)


def nested_value(depth: int, leaf: object) -> object:
    value = leaf
    for level in range(depth):
        value = {"k": value, "n": [level, "é\n\"", None, 1.5, {}, []]} if level % 2 else [value, {"z": True}]
    return value


@pytest.mark.parametrize("pretty", [False, True])
@pytest.mark.parametrize("value", [
    {"a": [1, {"b": None}], "c": {}, "d": [], "e": "x\ny", "f": 1e20, "g": -3},
    [], {}, "text", 7, nested_value(20, {"leaf": [1, 2]}),
])
def test_dumps_writes_what_orjson_writes(value: object, pretty: bool) -> None:
    assert dumps(value, pretty=pretty) == orjson.dumps(value, option=orjson.OPT_INDENT_2 if pretty else 0)


@pytest.mark.parametrize("pretty", [False, True])
@pytest.mark.parametrize("depth", [300, 1100])
def test_dumps_writes_values_deeper_than_orjson_does_as_the_stdlib_would(depth: int, pretty: bool) -> None:
    value = nested_value(depth, {"leaf": [1, {"x": "y"}]})
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(value)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # only for the stdlib's reference output, which recurses
    try:
        expected = json.dumps(value, indent=2 if pretty else None, separators=None if pretty else (",", ":"),
                              ensure_ascii=False).encode()
    finally:
        sys.setrecursionlimit(limit)
    assert dumps(value, pretty=pretty) == expected


@pytest.mark.parametrize("number", [b"12345678901234567890123", b"18446744073709551616", b"-9223372036854775809"])
def test_integers_past_64_bits_are_read_and_written_exactly(number: bytes) -> None:
    raw = b'{"query":{"term":{"big":%s}},"n":[1.5,-2],"s":"\\u00e9"}' % number
    value = strict_loads(raw)
    assert value["query"]["term"]["big"] == int(number)  # orjson alone: a float, rounded
    assert dumps(value) == b'{"query":{"term":{"big":%s}},"n":[1.5,-2],"s":"\xc3\xa9"}' % number
    assert dumps(value, pretty=True) == json.dumps(value, indent=2, ensure_ascii=False).encode()


def test_a_long_digit_run_in_a_string_costs_a_second_parse_and_changes_nothing() -> None:
    raw = b'{"id":"123456789012345678901234","n":18446744073709551615}'
    assert loads(raw) == orjson.loads(raw) == {"id": "123456789012345678901234", "n": 18446744073709551615}
