"""`proxy.ndjson` against the real clusters: whenever the parser accepts a body, the cluster reads the same items
from it and from its re-serialisation with every body rewritten; whenever the cluster refuses one, the parser
refuses it too (the proxy then relays the client's bytes and the cluster answers for itself)."""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import orjson
import pytest

from proxy.ndjson import NdjsonError, parse_msearch, serialize_msearch
from tests.conftest import ClusterRef
from tests.rawhttp import exchange

pytestmark = pytest.mark.integration

Q = b'{"query":{"match":{"title":"protein"}}}'
FRAMINGS = {
    "plain": b"{H}\n" + Q + b"\n",
    "no-trailing-newline": b"{H}\n" + Q,
    "leading-empty-line": b"\n" + Q + b"\n",
    "leading-empty-line-then-pair": b"\n{H}\n" + Q + b"\n",
    "two-leading-empty-lines": b"\n\n" + Q + b"\n",
    "empty-header-between": b"{H}\n" + Q + b"\n\n" + Q + b"\n",
    "whitespace-headers": b" \n" + Q + b"\n\t\r\n" + Q + b"\n",
    "null-header": b"null\n" + Q + b"\n",
    "blank-line-between-items": b"{H}\n" + Q + b"\n\n{H}\n" + Q + b"\n",
    "crlf": b"{H}\r\n" + Q + b"\r\n\r\n" + Q + b"\r\n",
    "dangling-header": b"{H}\n" + Q + b"\n{H}\n",
    "dangling-bad-header": b"{H}\n" + Q + b"\n{bad\n",
    "extra-trailing-newline": b"{H}\n" + Q + b"\n\n",
    "empty-body": b"{H}\n\n",
    "only-newline": b"\n",
    "form-feed-header": b"{H}\n" + Q + b"\n\x0c\n" + Q + b"\n",
    "duplicate-key-body": b'{H}\n{"size":1,"size":2}\n',
    "duplicate-key-header": b'{"index":"x","index":"y"}\n' + Q + b"\n",
    "trailing-tokens-header": b'{H} {"a":1}\n' + Q + b"\n",
    "array-header": b"[]\n" + Q + b"\n",
    "comment-in-body": b'{H}\n{/*c*/"query":{"match_all":{}}}\n',
}


@pytest.fixture(scope="module")
def probe_index(cluster: ClusterRef) -> Iterator[str]:
    name = f"ndjson-{uuid.uuid4().hex[:8]}"
    json = [("Content-Type", "application/json")]
    assert exchange(cluster.url, "PUT", f"/{name}", json, b'{"settings":{"number_of_replicas":0}}').status == 200
    for i, title in enumerate(["protein folding", "gene protein", "cell"]):
        exchange(cluster.url, "PUT", f"/{name}/_doc/{i}?refresh=true", json, orjson.dumps({"title": title}))
    yield name
    exchange(cluster.url, "DELETE", f"/{name}")


def items_read(url: str, index: str, data: bytes) -> list[tuple[int, object]] | None:
    """Each item's status and hit count as the cluster reads `data`; None if it refuses the whole request."""
    response = exchange(url, "POST", f"/{index}/_msearch", [("Content-Type", "application/x-ndjson")], data)
    if response.status != 200:
        return None
    return [(r["status"], r.get("hits", {}).get("total")) for r in orjson.loads(response.body)["responses"]]


def rewritten(data: bytes, leading: str) -> bytes:
    """The body as the proxy re-sends it when it rewrites every item's body (here: to an equal object)."""
    items = parse_msearch(data, leading_empty_line=leading)  # type: ignore[arg-type]
    return serialize_msearch([line for i in items for line in (i.raw_header, orjson.dumps(orjson.loads(i.raw_body)))])


@pytest.mark.parametrize("framing", FRAMINGS)
def test_msearch_parser_agrees_with_cluster(cluster: ClusterRef, probe_index: str, framing: str) -> None:
    data = FRAMINGS[framing].replace(b"{H}", b'{"index":"%s"}' % probe_index.encode())
    leading = "header" if cluster.flavor == "elasticsearch" else "skip"
    read = items_read(cluster.url, probe_index, data)
    try:
        items = parse_msearch(data, leading_empty_line=leading)  # type: ignore[arg-type]
    except NdjsonError:
        return  # relayed untouched: the cluster's own answer, whatever it is
    assert read is not None, "the parser accepts what the cluster refuses"
    assert len(read) == len(items)
    assert items_read(cluster.url, probe_index, rewritten(data, leading)) == read
