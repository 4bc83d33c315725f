"""An HTTP reranking service as a backend, so a fleet of GPU servers can serve many proxies.

Two wire formats (`RemoteSpec.api`):
- `cohere`: `POST {source}/v1/rerank` `{"model", "query", "documents", "top_n", "return_documents": false}` ->
  `{"results": [{"index", "relevance_score"}]}`. Cohere, Jina, vLLM and Infinity speak it.
- `tei`: Hugging Face text-embeddings-inference, `POST {source}/rerank` `{"query", "texts", "raw_scores": false}` ->
  `[{"index", "score"}]`.
Both return results sorted by score, so scores are mapped back to the documents by `index`.

The Scorer interface is synchronous and runs on the engine's worker thread; the HTTP side is aiohttp (already a
dependency of the proxy) on a private event loop thread, which makes the split calls of one search concurrent and
lets one semaphore bound the calls in flight across every search this scorer serves. Every failure is a
RuntimeError carrying the HTTP status and the service's own message, so the proxy falls back to the cluster's order.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import weakref
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import aiohttp
import orjson

from rerank.backend import ModelLoadError
from rerank.spec import ModelSpec, RemoteSpec

log = logging.getLogger(__name__)

T = TypeVar("T")
PATHS = {"cohere": "/v1/rerank", "tei": "/rerank"}
# A host that takes longer than this to accept a connection is unreachable: that is a connection error (retried),
# not a slow answer (not retried).
CONNECT_TIMEOUT_S = 3.0
# The engine's worker thread waits for every retry, and with it the model's whole queue: no wait may be long.
MAX_BACKOFF_S = 5.0
# aiohttp >= 3.10 tells a connect timeout apart from a read timeout; older ones raise one kind for both.
_CONNECT_TIMEOUT: type[BaseException] | tuple[()] = getattr(aiohttp, "ConnectionTimeoutError", ())
_MESSAGE_CHARS = 300


def request_body(api: str, model: str | None, query: str, docs: Sequence[str]) -> dict[str, Any]:
    """The JSON body that asks `api` to score every document of `docs` against `query`."""
    if api == "tei":
        # truncate: a long document is cut by the service instead of failing the whole call with 413/422
        return {"query": query, "texts": list(docs), "raw_scores": False, "truncate": True}
    body: dict[str, Any] = {"query": query, "documents": list(docs), "top_n": len(docs), "return_documents": False}
    if model is not None:
        body["model"] = model
    return body


def parse_scores(api: str, payload: Any, count: int) -> list[float]:
    """Scores in document order from the service's answer (sorted by score); ValueError if it is not a full answer."""
    results, key = (payload, "score") if api == "tei" else (_field(payload, "results"), "relevance_score")
    if not isinstance(results, list):
        raise ValueError(f"expected a list of results, got {type(results).__name__}")
    scores: list[float | None] = [None] * count
    for item in results:
        index, value = _field(item, "index"), _field(item, key)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise ValueError(f"result index {index!r} is not one of the {count} documents sent")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"result {index}: {key} {value!r} is not a number")
        if scores[index] is not None:
            raise ValueError(f"result index {index} appears twice")
        scores[index] = float(value)
    missing = [i for i, s in enumerate(scores) if s is None]
    if missing:
        raise ValueError(f"{len(missing)} of {count} documents have no score (first: index {missing[0]})")
    return scores  # type: ignore[return-value]  # no None left


def service_message(body: bytes) -> str:
    """The human part of an error answer: Cohere `message`, TEI `error`, FastAPI `detail`, else the raw text."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict):
        for key in ("message", "error", "detail"):
            value = payload.get(key)
            if isinstance(value, dict):  # OpenAI-style {"error": {"message": ...}}
                value = value.get("message", value)
            if value:
                text = value if isinstance(value, str) else orjson.dumps(value).decode()
                return text[:_MESSAGE_CHARS]
    return body.decode("utf-8", "replace").strip()[:_MESSAGE_CHARS] or "(empty body)"


def backoff_s(base: float, retry: int, retry_after: str | None = None) -> float | None:
    """Wait before retry number `retry` (1-based): base * 2^(retry-1), jittered to 50-100% so that proxies which failed
    together do not come back together. A server's Retry-After (seconds) is honoured when it asks for longer; None
    when it asks for more than MAX_BACKOFF_S, since a search cannot wait that long."""
    wait = min(base * 2 ** (retry - 1), MAX_BACKOFF_S) * random.uniform(0.5, 1.0)
    try:
        asked = float(retry_after) if retry_after is not None else 0.0
    except ValueError:  # the HTTP-date form: rare for rerankers, not worth parsing
        asked = 0.0
    return None if asked > MAX_BACKOFF_S else max(wait, asked)


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """Consecutive slices of at most `size` items, in order."""
    return [items[start : start + size] for start in range(0, len(items), size)]


class _Retryable(Exception):
    """One attempt failed in a way another attempt may not (connection error, 429, 5xx)."""

    def __init__(self, reason: str, retry_after: str | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class RemoteScorer:
    def __init__(self, spec: ModelSpec, name: str | None = None) -> None:
        if not isinstance(spec, RemoteSpec):
            raise ModelLoadError(f"RemoteScorer needs backend 'remote', got {spec.backend!r}")
        self.name = name or spec.source
        self.spec = spec
        self.url = spec.source.rstrip("/") + PATHS[spec.api]
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if spec.api_key_env:
            token = os.environ.get(spec.api_key_env, "").strip()
            if not token:
                raise ModelLoadError(
                    f"model {self.name!r}: environment variable {spec.api_key_env} (api_key_env) is not set or empty"
                )
            headers["Authorization"] = f"Bearer {token}"
        self._loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_run_loop, args=(self._loop,), name=f"remote-{self.name}", daemon=True)
        thread.start()
        self._session: aiohttp.ClientSession = self._call(self._open(headers))
        # A scorer dropped by a config reload takes its loop thread and connections with it.
        self._closer = weakref.finalize(self, _shutdown, self._loop, self._session, thread)

    async def _open(self, headers: dict[str, str]) -> aiohttp.ClientSession:
        # Created on the private loop, which the semaphore and the session belong to.
        self._limit = asyncio.Semaphore(self.spec.max_concurrency)
        timeout = aiohttp.ClientTimeout(total=self.spec.timeout_s, sock_connect=min(self.spec.timeout_s,
                                                                                     CONNECT_TIMEOUT_S))
        connector = aiohttp.TCPConnector(limit=self.spec.max_concurrency)  # the semaphore never lets more be used
        return aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector, raise_for_status=False)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def close(self) -> None:
        """Close the connections and stop the loop thread (also done when the scorer is garbage-collected)."""
        self._closer()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """An approximation: whitespace-separated words. The service's tokenizer is not here; subword tokenizers
        produce somewhat more tokens than words, so budgets built on this should leave headroom."""
        return [len(text.split()) for text in texts]

    def score(self, query: str, docs: Sequence[str]) -> list[float]:
        if not docs:
            return []
        return self._call(self._score(query, list(docs)))

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> list[float]:
        """Pairs of several searches: the services take one query per call, so one call per distinct query
        (split by `max_texts_per_call`), all in flight together within `max_concurrency`."""
        if not docs:
            return []
        rows: dict[str, list[int]] = {}
        for i, query in enumerate(queries):
            rows.setdefault(query, []).append(i)
        calls = [(query, piece) for query, positions in rows.items()
                 for piece in chunks(positions, self.spec.max_texts_per_call)]
        found = self._call(self._gather([(query, [docs[i] for i in piece]) for query, piece in calls]))
        scores = [0.0] * len(docs)
        for (_, piece), values in zip(calls, found):
            for i, value in zip(piece, values):
                scores[i] = value
        return scores

    async def _score(self, query: str, docs: list[str]) -> list[float]:
        results = await self._gather([(query, piece) for piece in chunks(docs, self.spec.max_texts_per_call)])
        # Pieces are consecutive slices in order, so concatenation is document order.
        return [score for piece in results for score in piece]

    async def _gather(self, calls: list[tuple[str, Sequence[str]]]) -> list[list[float]]:
        """One `_post` per (query, documents), concurrently; the results in call order."""
        if len(calls) == 1:
            return [await self._post(*calls[0])]
        tasks = [asyncio.ensure_future(self._post(query, docs)) for query, docs in calls]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:  # the first failure fails the batch: the other calls are not worth waiting for
                task.cancel()
            raise

    async def _post(self, query: str, docs: Sequence[str]) -> list[float]:
        body = orjson.dumps(request_body(self.spec.api, self.spec.remote_model, query, docs))
        attempts = self.spec.retries + 1
        for attempt in range(attempts):
            try:
                return await self._attempt(body, len(docs))
            except _Retryable as err:
                wait = backoff_s(self.spec.retry_backoff_s, attempt + 1, err.retry_after)
                if wait is None:
                    raise RuntimeError(
                        f"model {self.name!r}: {self.url} {err}, and asks to retry after {err.retry_after}s"
                    ) from None
                if attempt + 1 == attempts:
                    raise RuntimeError(
                        f"model {self.name!r}: {self.url} failed after {attempts} attempt(s): {err}"
                    ) from None
                log.warning("model %s: %s; retry %d of %d in %.2fs", self.name, err, attempt + 1,
                            self.spec.retries, wait)
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _attempt(self, body: bytes, count: int) -> list[float]:
        """One HTTP call; _Retryable for what another attempt may fix, RuntimeError for what it would not."""
        async with self._limit:
            try:
                async with self._session.post(self.url, data=body) as response:
                    status, raw = response.status, await response.read()
                    retry_after = response.headers.get("Retry-After")
            except _CONNECT_TIMEOUT as err:
                raise _Retryable(f"connect timed out ({type(err).__name__})") from None
            except TimeoutError:
                # Asking again would only make the search wait twice as long for a service that is too slow.
                raise RuntimeError(
                    f"model {self.name!r}: {self.url} did not answer within {self.spec.timeout_s}s (not retried)"
                ) from None
            except aiohttp.ClientError as err:  # refused, reset, DNS, a broken response: the transport failed
                raise _Retryable(f"{type(err).__name__}: {err}") from None
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}: {service_message(raw)}", retry_after)
        if status != 200:
            raise RuntimeError(f"model {self.name!r}: {self.url} answered HTTP {status}: {service_message(raw)}")
        try:
            return parse_scores(self.spec.api, orjson.loads(raw), count)
        except (orjson.JSONDecodeError, ValueError) as err:
            raise RuntimeError(f"model {self.name!r}: {self.url} sent an unusable answer: {err}") from None


def _field(item: Any, key: str) -> Any:
    if not isinstance(item, dict):
        raise ValueError(f"expected an object with {key!r}, got {type(item).__name__}")
    if key not in item:
        raise ValueError(f"result has no {key!r}: {orjson.dumps(item).decode()[:_MESSAGE_CHARS]}")
    return item[key]


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


def _shutdown(loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession, thread: threading.Thread) -> None:
    """Close the session on its own loop, then stop the loop; safe from any thread, including the GC's."""
    if loop.is_closed():
        return

    async def close() -> None:
        try:
            await session.close()
        finally:
            loop.stop()

    asyncio.run_coroutine_threadsafe(close(), loop)
    if thread is not threading.current_thread():
        thread.join(timeout=5)
