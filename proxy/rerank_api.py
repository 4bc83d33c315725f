"""A rerank API from the proxy's own engine, on the admin listener: what RAG frameworks and services already call.

- Cohere: `POST /v1/rerank` and `/v2/rerank` `{model, query, documents, top_n, rank_fields, return_documents,
  max_tokens_per_doc, max_chunks_per_doc}` -> `{id, results: [{index, relevance_score, document?}], meta}`. A
  document is a string or an object: its `text`, or its `rank_fields` one per line.
- TEI (text-embeddings-inference): `POST /rerank` `{query, texts, raw_scores, return_text, truncate,
  truncation_direction}` -> `[{index, score, text?}]`.

Both are scored exactly as a search's window is: the same per-model queue (so calls and searches share batches and
the score cache), the same text budget and chunking. A score is the model's own, the one the proxy fuses, so a
`remote` backend pointed here ranks as the local model would. Each API answers in its own error dialect (Cohere's
`{message}`, TEI's `{error, error_type}`), so its clients raise their usual exceptions.
"""
from __future__ import annotations

import hmac
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from rerank.chunking import Chunking, score_chunked
from rerank.engine import ModelUnavailable, Overloaded, ScoringEngine
from rerank.text import TextConfig, build_document_text, truncate_tokens

from . import metrics
from .config import Config, ConfigError, RerankApiOptions
from .relay import Incoming
from .wire import HeaderView, Reply, RequestHead, header_line, json_reply

Route = Literal["cohere-v1", "cohere-v2", "tei"]
ROUTES: dict[str, Route] = {"/v1/rerank": "cohere-v1", "/v2/rerank": "cohere-v2", "/rerank": "tei"}
_CHALLENGE = header_line(b"WWW-Authenticate", b'Bearer realm="rerank-proxy"')


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "validation"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind  # kind: TEI's error_type


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send options this API does not know (priority, ...)


class CohereRequest(_Request):
    model: StrictStr | None = None
    query: StrictStr
    documents: list[StrictStr | dict[str, Any]]
    top_n: StrictInt | None = Field(None, ge=1)
    rank_fields: list[StrictStr] | None = Field(None, min_length=1)
    return_documents: StrictBool = False
    max_tokens_per_doc: StrictInt | None = Field(None, ge=1)
    max_chunks_per_doc: StrictInt | None = Field(None, ge=1)


class TeiRequest(_Request):
    query: StrictStr
    texts: list[StrictStr]
    raw_scores: StrictBool = False  # accepted; a score is always the model's own (see the module docstring)
    return_text: StrictBool = False
    truncate: StrictBool | None = False  # texts are always cut to the budget, as a search's are
    truncation_direction: Literal["Left", "Right", "left", "right"] = "Right"


@dataclass(frozen=True)
class Call:
    """A validated call, in the engine's terms."""

    model: str
    query: str
    texts: list[str]
    chunking: Chunking | None
    top_n: int | None


@dataclass(frozen=True)
class ApiGuard:
    """Who may call the API: holders of its own token (`rerank_api.token_env`), else of the admin token, else
    anyone who reaches the admin listener."""

    token: bytes | None  # never logged or shown

    def __repr__(self) -> str:
        return f"ApiGuard(token={'set' if self.token else 'none'})"

    @classmethod
    def of(cls, config: Config) -> ApiGuard:
        name = config.rerank_api.token_env or config.admin.token_env
        if name is None:
            return cls(None)
        value = os.environ.get(name, "").strip()
        if not value:
            raise ConfigError(f"rerank_api.token_env: the environment variable {name} is not set")
        return cls(value.encode())

    def allows(self, head: RequestHead) -> bool:
        if self.token is None:
            return True
        scheme, _, given = HeaderView(head.pairs).get("Authorization", "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("latin-1"), self.token)


def resolve_model(config: Config, requested: str | None) -> str:
    """A `models` key, or the `source` it loads (`mixedbread-ai/mxbai-rerank-base-v2`); none: the default."""
    if requested is None or requested == "":
        return config.rerank_api.default_model or next(iter(config.models))
    if requested in config.models:
        return requested
    for name, spec in config.models.items():
        if spec.source == requested:
            return name
    raise ApiError(404, f"model '{requested}' not found; this server has: {', '.join(config.models)}", "validation")


def _budget(options: RerankApiOptions, requested: int | None) -> int:
    return requested if requested is not None else options.max_tokens_per_doc


def _check_sizes(options: RerankApiOptions, query: str, count: int, kind: str) -> None:
    if not query.strip():
        raise ApiError(400, "invalid request: query must not be empty")
    if len(query) > options.max_query_chars:
        raise ApiError(400, f"invalid request: query is longer than {options.max_query_chars} characters")
    if count == 0:
        raise ApiError(400, f"invalid request: {kind} must not be empty")
    if count > options.max_documents:
        raise ApiError(413, f"invalid request: {count} {kind} sent, at most {options.max_documents} are allowed")


def cohere_text(document: str | dict[str, Any], rank_fields: Sequence[str] | None, budget: int, i: int) -> str:
    """What the model reads of one Cohere document: the string, an object's `text`, or its `rank_fields`."""
    if isinstance(document, str):
        return truncate_tokens(document, budget)
    if rank_fields is not None:
        return build_document_text(document, TextConfig(fields=list(rank_fields), max_tokens=budget))
    text = document.get("text")
    if not isinstance(text, str):
        raise ApiError(400, f"invalid request: documents[{i}] is an object without a string 'text' field "
                       "(or give rank_fields)")
    return truncate_tokens(text, budget)


def cohere_call(config: Config, request: CohereRequest) -> Call:
    options = config.rerank_api
    _check_sizes(options, request.query, len(request.documents), "documents")
    budget = _budget(options, request.max_tokens_per_doc)
    texts = [cohere_text(doc, request.rank_fields, budget, i) for i, doc in enumerate(request.documents)]
    chunking = options.chunking
    if request.max_chunks_per_doc is not None:
        chunking = (chunking or Chunking()).model_copy(update={"max_chunks": request.max_chunks_per_doc})
    return Call(resolve_model(config, request.model), request.query, texts, chunking, request.top_n)


def tei_call(config: Config, request: TeiRequest) -> Call:
    options = config.rerank_api
    _check_sizes(options, request.query, len(request.texts), "texts")
    budget = options.max_tokens_per_doc
    if request.truncation_direction.lower() == "left":  # keep each text's end: cut the reversed text
        texts = [truncate_tokens(t[::-1], budget)[::-1] for t in request.texts]
    else:
        texts = [truncate_tokens(t, budget) for t in request.texts]
    return Call(resolve_model(config, None), request.query, texts, options.chunking, None)


def ranked(scores: Sequence[float], top_n: int | None) -> list[tuple[int, float]]:
    """(index, score), best first; equal scores keep the documents' order."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return [(i, scores[i]) for i in order[:top_n]]


def cohere_body(route: Route, request: CohereRequest, results: list[tuple[int, float]], count: int) -> bytes:
    items = []
    for index, score in results:
        item: dict[str, Any] = {"index": index, "relevance_score": score}
        if request.return_documents:
            document = request.documents[index]
            item["document"] = {"text": document} if isinstance(document, str) else document
        items.append(item)
    meta = {"api_version": {"version": "1" if route == "cohere-v1" else "2"},
            "billed_units": {"search_units": -(-count // 100)}}  # Cohere bills one unit per 100 documents
    return orjson.dumps({"id": str(uuid.uuid4()), "results": items, "meta": meta})


def tei_body(request: TeiRequest, results: list[tuple[int, float]]) -> bytes:
    return orjson.dumps([
        {"index": i, "score": s, **({"text": request.texts[i]} if request.return_text else {})} for i, s in results
    ])


async def score_call(engine: ScoringEngine, call: Call, timeout_s: float) -> list[float]:
    """Every document's score, or an ApiError saying why there is none: a call is all or nothing (a search can fall
    back to the cluster's order; an API caller has no such order)."""
    try:
        scores, _ = await score_chunked(
            lambda texts: engine.score(call.model, call.query, texts, timeout_s), call.texts, call.chunking)
    except Overloaded as err:
        raise ApiError(429, f"model {call.model} is overloaded: {err}", "overloaded") from None
    except ModelUnavailable as err:  # loading, circuit open, unloaded
        raise ApiError(503, str(err), "unhealthy") from None
    except TimeoutError:
        raise ApiError(504, f"model {call.model} scored nothing within {timeout_s:g} s", "backend") from None
    except Exception as err:
        raise ApiError(500, f"model {call.model} failed: {type(err).__name__}", "backend") from None
    missing = sum(score is None for score in scores)
    if missing:
        raise ApiError(504, f"model {call.model} scored {len(scores) - missing} of {len(scores)} documents within "
                       f"{timeout_s:g} s", "backend")
    return [float(score) for score in scores if score is not None]


def error_reply(route: Route, err: ApiError) -> Reply:
    if route == "tei":  # TEI answers every invalid input 422
        status = 422 if err.status == 400 else err.status
        return json_reply(status, orjson.dumps({"error": err.message, "error_type": err.kind}))
    return json_reply(err.status, orjson.dumps({"message": err.message}))


def _validation_message(err: ValidationError) -> str:
    problems = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()[:5]]
    return "invalid request: " + "; ".join(problems)


async def answer(route: Route, incoming: Incoming, config: Config, engine: ScoringEngine, guard: ApiGuard) -> Reply:
    """One API call, answered; every failure is the API's own error reply."""
    started = time.perf_counter()
    model = ""  # the label stays bounded: a configured model's name, never the caller's string
    try:
        if not guard.allows(incoming.head):
            reply = error_reply(route, ApiError(401, "invalid api token", "unhealthy"))
            reply.lines.append(_CHALLENGE)
            return reply
        if incoming.head.method != "POST":
            raise ApiError(405, f"[{incoming.head.method}] is not allowed here; use POST")
        body = await incoming.body.read(config.rerank_api.max_body_bytes)
        if body is None:
            raise ApiError(413, f"the body is larger than {config.rerank_api.max_body_bytes} bytes")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            raise ApiError(400, f"invalid request: the body is not JSON ({err})") from None
        try:
            if route == "tei":
                tei = TeiRequest.model_validate(payload)
                call = tei_call(config, tei)
            else:
                cohere = CohereRequest.model_validate(payload)
                call = cohere_call(config, cohere)
        except ValidationError as err:
            raise ApiError(400, _validation_message(err)) from None
        model = call.model
        scores = await score_call(engine, call, config.rerank_api.timeout_ms / 1000)
        metrics.API_DOCUMENTS.add(len(scores), route, model)
        results = ranked(scores, call.top_n)
        body = tei_body(tei, results) if route == "tei" else cohere_body(route, cohere, results, len(scores))
        reply = json_reply(200, body)
    except ApiError as err:
        reply = error_reply(route, err)
    metrics.API_REQUESTS.inc(route, model, str(reply.status))
    metrics.API_SECONDS.labels(route, model).observe(time.perf_counter() - started)
    return reply
