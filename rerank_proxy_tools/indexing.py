"""Documents into a cluster: an index created (or recreated) with given settings and mappings, bulk-loaded under the
documents' own ids, refreshed, its count checked. The one copy of this that `rerank-proxy eval`, the demo, the
benchmarks and the tests use.

Plain blocking HTTP (urllib, no environment proxies), straight to the cluster: scripts and tests call it as is,
async code through `asyncio.to_thread` (`rerank-proxy eval` sends one `bulk_bodies` request per call, so that an
interrupt stops a long load between two requests).

    load_index("http://127.0.0.1:9200", "docs", [{"_id": "1", "title": "...", "text": "..."}],
               body={"settings": {"number_of_shards": 1}, "mappings": {...}})
"""
from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import orjson

BULK_DOCS = 500  # documents per _bulk request
TIMEOUT_S = 900.0  # per socket operation: a large bulk request on a busy cluster takes a while
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback clusters: no http_proxy detour

Document = Mapping[str, Any]


class IndexingError(RuntimeError):
    """The cluster refused a request (`status`: its HTTP status) or could not be reached (`status` None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def call(cluster: str, method: str, path: str, body: bytes | Mapping[str, Any] | None = None,
         timeout: float = TIMEOUT_S) -> tuple[int, Any]:
    """One request to the cluster: (status, decoded body). A mapping is sent as JSON, bytes as NDJSON (`_bulk`).
    The body is the decoded JSON, else its text (a proxy or load balancer in the way), None when empty. Error
    statuses are returned, not raised; a cluster that cannot be reached raises IndexingError."""
    data = body if body is None or isinstance(body, bytes) else orjson.dumps(body)
    kind = "application/x-ndjson" if isinstance(body, bytes) else "application/json"
    request = urllib.request.Request(f"{cluster}{path}", data=data, method=method,
                                     headers={"Content-Type": kind} if data is not None else {})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except urllib.error.URLError as err:
        raise IndexingError(f"cannot reach the cluster at {cluster}: {err.reason}") from None
    except (OSError, http.client.HTTPException) as err:  # a timeout, a connection lost half-way
        raise IndexingError(f"{method} {cluster}{path}: {type(err).__name__}: {err}") from None
    if not raw:
        return status, None
    try:
        return status, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return status, raw.decode("utf-8", "replace")


def reason(document: Any) -> str:
    """The cluster's error reason, else the start of the body."""
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        return str(document["error"].get("reason") or document["error"])
    return str(document)[:300]


def _path(index: str, endpoint: str = "") -> str:
    return f"/{quote(index)}{endpoint}"


def _expect_ok(cluster: str, method: str, path: str, what: str, body: Mapping[str, Any] | None = None) -> Any:
    """The decoded body of a request that must succeed; IndexingError naming `what` failed otherwise."""
    status, document = call(cluster, method, path, body)
    if status != 200:
        raise IndexingError(f"{what} failed: {reason(document)}", status)
    return document


def document_count(cluster: str, index: str) -> int | None:
    """The documents `index` holds once refreshed; None when there is no such index."""
    status, document = call(cluster, "HEAD", _path(index))
    if status == 404:
        return None
    if status != 200:
        raise IndexingError(f"looking up index {index} failed: HTTP {status}", status)
    _expect_ok(cluster, "POST", _path(index, "/_refresh"), f"refreshing index {index}")
    return int(_expect_ok(cluster, "GET", _path(index, "/_count"), f"counting index {index}")["count"])


def create_index(cluster: str, index: str, body: Mapping[str, Any]) -> None:
    """A new index from a create-index body (`{"settings", "mappings"}`)."""
    _expect_ok(cluster, "PUT", _path(index), f"creating index {index}", body)


def delete_index(cluster: str, index: str) -> None:
    """Gone afterwards, whether it existed or not."""
    status, document = call(cluster, "DELETE", _path(index))
    if status not in (200, 404):
        raise IndexingError(f"deleting index {index} failed: {reason(document)}", status)


def bulk_bodies(
    docs: Iterable[Document],
    *,
    id_field: str = "_id",
    source: Callable[[Document], Mapping[str, Any]] | None = None,
    chunk_docs: int = BULK_DOCS,
) -> Iterator[tuple[bytes, int]]:
    """`_bulk` request bodies of up to `chunk_docs` `index` actions, each with the number of documents it carries.
    Every document keeps its own id (`doc[id_field]`); its `_source` is `source(doc)`, by default the document
    without its id field."""
    if source is None:
        def source(doc: Document) -> Mapping[str, Any]:
            return {key: value for key, value in doc.items() if key != id_field}

    lines: list[bytes] = []
    for doc in docs:
        lines += [orjson.dumps({"index": {"_id": str(doc[id_field])}}), orjson.dumps(source(doc))]
        if len(lines) >= 2 * chunk_docs:
            yield b"\n".join(lines) + b"\n", len(lines) // 2
            lines = []
    if lines:
        yield b"\n".join(lines) + b"\n", len(lines) // 2


def send_bulk(cluster: str, index: str, body: bytes) -> None:
    """One `_bulk` request into `index`; IndexingError naming the first refused document's reason."""
    status, result = call(cluster, "POST", _path(index, "/_bulk"), body)
    if status != 200 or not isinstance(result, dict) or result.get("errors"):
        items = result.get("items", []) if isinstance(result, dict) else []
        failed = [item for item in items if item.get("index", {}).get("error")]
        detail = reason({"error": failed[0]["index"]["error"]}) if failed else reason(result)
        raise IndexingError(f"bulk indexing into {index} failed: {detail}", status)


def bulk_load(
    cluster: str,
    index: str,
    docs: Iterable[Document],
    *,
    id_field: str = "_id",
    source: Callable[[Document], Mapping[str, Any]] | None = None,
    chunk_docs: int = BULK_DOCS,
) -> int:
    """`docs` indexed (see `bulk_bodies`), then a refresh; returns how many were sent."""
    sent = 0
    for body, count in bulk_bodies(docs, id_field=id_field, source=source, chunk_docs=chunk_docs):
        send_bulk(cluster, index, body)
        sent += count
    _expect_ok(cluster, "POST", _path(index, "/_refresh"), f"refreshing index {index}")
    return sent


def load_index(
    cluster: str,
    index: str,
    docs: Sequence[Document],
    *,
    body: Mapping[str, Any] | None = None,
    recreate: bool = False,
    id_field: str = "_id",
    source: Callable[[Document], Mapping[str, Any]] | None = None,
    chunk_docs: int = BULK_DOCS,
    log: Callable[[str], object] | None = None,
) -> bool:
    """`index` holding `docs`: True when it loaded them, False when the index already held that many documents and
    was kept.

    `recreate` deletes the index first, whatever it holds. An absent index is created with `body` (settings and
    mappings); with None the first bulk request creates it the cluster's way (dynamic mapping, default settings).
    An index holding another number of documents is loaded again over the same ids. The count is checked after."""
    expected = len(docs)
    if recreate:
        delete_index(cluster, index)
        found = None
    else:
        found = document_count(cluster, index)
    if found == expected:
        if log is not None:
            log(f"{index}: already holds {expected} documents")
        return False
    if found is None and body is not None:
        create_index(cluster, index, body)
    if log is not None:
        log(f"{index}: loading {expected} documents")
    bulk_load(cluster, index, docs, id_field=id_field, source=source, chunk_docs=chunk_docs)
    loaded = document_count(cluster, index)
    if loaded != expected:
        raise IndexingError(f"index {index}: {loaded or 0:,} documents after loading {expected:,}")
    return True
