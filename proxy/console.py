"""The console: a web page on the admin listener (`/_rerank_proxy/ui`) and the small JSON API it reads.

The page is three static files in `proxy/ui/`, served from a fixed list of names (nothing else on disk can be
asked for) with a Content-Security-Policy that lets it load only from the proxy itself. Its API:
- `GET  .../ui/api/indices`: the cluster's open indices and aliases, the config's variants and experiments;
- `POST .../ui/api/compare`: one query against one index, under each variant asked for: the cluster's order and the
  order the proxy serves, with what the model read, the scores and how long each step took;
- `GET  .../ui/api/eval`: the `rerank-proxy eval --json` file named by `console.eval_json`.

A compare runs each variant's search through the pipeline a client's search takes (`plan_search`, the cluster asked
once per distinct rewritten request, `score_hits` on the proxy's engine), so the order it shows is the order a
client sending that search with the headers `console_headers` names is served: `X-Rerank-Variant`, and
`X-Rerank: on` unless the variant itself sets `enabled`.
"""
from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rerank.chunking import Chunking, split
from rerank.text import TextConfig, build_document_text

from .config import Config
from .errors import es_error_reply
from .ndjson import dumps
from .search import RequestOptions, Rerank, Scored, cluster_hits, cluster_order, plan_search, score_hits
from .variants import CONTROL
from .wire import Reply, header_line, json_reply, reason_for

# name -> content type: the only files the console serves
STATIC_FILES: Mapping[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
)
_SECURITY_LINES = [
    header_line(b"Content-Security-Policy", CONTENT_SECURITY_POLICY.encode()),
    header_line(b"X-Content-Type-Options", b"nosniff"),
    header_line(b"Referrer-Policy", b"no-referrer"),
    header_line(b"Cache-Control", b"no-store"),
]
MAX_COMPARE_BODY = 64 * 1024
_TITLE_CHARS = 200


def static_name(rest: str) -> str | None:
    """The console file a path below `ui/` names (`` is the page itself); None for anything else."""
    name = rest or "index.html"
    return name if name in STATIC_FILES else None


@functools.cache
def _static_bytes(name: str) -> bytes:
    return (resources.files(__package__ or "proxy") / "ui" / name).read_bytes()


def static_reply(name: str) -> Reply:
    lines = [header_line(b"Content-Type", STATIC_FILES[name].encode()), *_SECURITY_LINES]
    return Reply(200, reason_for(200), lines, _static_bytes(name))


def _api_reply(status: int, document: Any) -> Reply:
    reply = json_reply(status, orjson.dumps(document))
    reply.lines += _SECURITY_LINES
    return reply


def _bad_request(message: str) -> Reply:
    return es_error_reply(400, "rerank_proxy_console_exception", message)


# ---- compare: the pure parts -----------------------------------------------------------------------------------


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    index: str = Field(min_length=1, max_length=1000)
    query: str = Field(min_length=1, max_length=2000)
    variants: list[str] = Field([CONTROL], min_length=1, max_length=8)
    size: int = Field(10, ge=1, le=100)


def query_body(query: str, fields: Sequence[str] | None, size: int) -> dict[str, Any]:
    """The search the console sends: a `multi_match` of the typed text over `fields` (lenient: a field that is not
    text is not an error), or a `simple_query_string` over the index's default fields when none are known."""
    if fields:
        clause: dict[str, Any] = {"multi_match": {"query": query, "fields": list(fields), "lenient": True}}
    else:
        clause = {"simple_query_string": {"query": query}}
    return {"query": clause, "size": size}


def text_fields(mappings: Any) -> list[str]:
    """The dotted names of the `text` fields in a `GET INDEX/_mapping` answer, over all its indices, in order."""
    found: dict[str, None] = {}

    def walk(properties: Any, prefix: str) -> None:
        if not isinstance(properties, Mapping):
            return
        for name, spec in properties.items():
            if not isinstance(spec, Mapping):
                continue
            if spec.get("type") == "text":
                found[f"{prefix}{name}"] = None
            walk(spec.get("properties"), f"{prefix}{name}.")

    if isinstance(mappings, Mapping):
        for entry in mappings.values():
            inner = entry.get("mappings") if isinstance(entry, Mapping) else None
            walk(inner.get("properties") if isinstance(inner, Mapping) else None, "")
    return list(found)


def console_headers(config: Config, variant: str) -> dict[str, str]:
    """The headers a client sends to be served what the console shows for `variant`: reranking forced on (so an
    index without a rule of its own is reranked too), unless the variant itself says whether to rerank."""
    headers = {"X-Rerank-Variant": variant}
    own = config.variants.get(variant)
    if own is None or "enabled" not in own.model_fields_set:
        headers["X-Rerank"] = "on"
    return headers


def movement(cluster_rank: int, rank: int, page_size: int) -> dict[str, Any]:
    """How a hit moved from the cluster's rank to its served rank (both from 1): `new` when the cluster's own page
    of `page_size` did not show it."""
    if cluster_rank > page_size:
        return {"kind": "new", "by": cluster_rank - rank}
    if cluster_rank > rank:
        return {"kind": "up", "by": cluster_rank - rank}
    if cluster_rank < rank:
        return {"kind": "down", "by": rank - cluster_rank}
    return {"kind": "same", "by": 0}


def _first_line(text: str | None) -> str | None:
    if not text:
        return None
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line[:_TITLE_CHARS] or None


def hit_title(hit: Mapping[str, Any], text: str | None) -> str | None:
    """What names a hit in a column: its `_source.title`, else the first line of its text."""
    source = hit.get("_source")
    title = source.get("title") if isinstance(source, Mapping) else None
    if isinstance(title, str) and title.strip():
        return title.strip()[:_TITLE_CHARS]
    return _first_line(text)


def cluster_column(hits: Sequence[Mapping[str, Any]], size: int, text_of: Any) -> list[dict[str, Any]]:
    """The cluster's own page: its first `size` hits in its order. `text_of(hit)`: the hit's text as the model
    would read it, for its title."""
    return [
        {"rank": rank, "index": hit.get("_index"), "id": hit.get("_id"), "cluster_score": hit.get("_score"),
         "title": hit_title(hit, text_of(hit))}
        for rank, hit in enumerate(hits[:size], start=1)
    ]


def reranked_column(
    scored: Scored, hits: Sequence[Mapping[str, Any]], size: int, chunking: Chunking | None = None
) -> list[dict[str, Any]]:
    """The page the proxy serves from `scored` (its first `size` hits in the new order), each hit with its cluster
    rank and movement, its scores (the fused `score` is what `_score` becomes; None keeps the cluster's) and the
    text the model read (and, with chunking, the chunk that scored best)."""
    column = []
    for rank, ranked in enumerate(scored.ranking[:size], start=1):
        hit = hits[ranked.position]
        read = scored.texts[ranked.position] if ranked.position < len(scored.texts) else None
        chunk_number = None
        if scored.best_chunks is not None and ranked.position < len(scored.best_chunks):
            chunk_number = scored.best_chunks[ranked.position]
        chunk = None
        if chunk_number is not None and chunking is not None and read is not None:
            parts = split(read, chunking)
            chunk = parts[chunk_number] if chunk_number < len(parts) else None
        cluster_rank = ranked.position + 1
        column.append({
            "rank": rank, "index": hit.get("_index"), "id": hit.get("_id"), "cluster_rank": cluster_rank,
            "movement": movement(cluster_rank, rank, size), "cluster_score": hit.get("_score"),
            "score": ranked.score, "model_score": ranked.model_score, "title": hit_title(hit, read),
            "text": read, "chunk": chunk_number, "chunk_text": chunk,
        })
    return column


# ---- compare: against the cluster and the engine ------------------------------------------------------------------


@dataclass(frozen=True)
class _Asked:
    status: int
    document: Any  # the decoded answer, None when it is not JSON
    took_ms: float  # the proxy's wall time for the request
    target: str


def _took(document: Any) -> int | None:
    took = document.get("took") if isinstance(document, dict) else None
    return took if isinstance(took, int) else None


async def _ask(state: Any, index: str, body: Mapping[str, Any], params: Sequence[tuple[str, str]]) -> _Asked:
    target = f"/{quote(index, safe=',*')}/_search" + (f"?{urlencode(list(params))}" if params else "")
    lines = [b"content-type: application/json\r\n", b"accept: application/json\r\n"]
    started = time.perf_counter()
    reply = await state.upstream.fetch("POST", target.encode(), lines, dumps(dict(body)))
    took_ms = (time.perf_counter() - started) * 1000
    try:
        document = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        document = None
    return _Asked(reply.status, document, took_ms, target)


async def _query_fields(state: Any, index: str) -> tuple[list[str] | None, TextConfig]:
    """The fields to search: the index rule's `text` fields (or its template's), else the mapping's text fields;
    and the text config the index's hits are read with."""
    resolution = await state.resolver.resolve(index)
    text = resolution.settings.text if resolution.settings is not None else state.config.defaults.text
    configured = text.source_fields()
    if configured:
        return configured, text
    found = await state.upstream.get_json_bytes(f"/{quote(index, safe=',*')}/_mapping".encode())
    try:
        return (text_fields(orjson.loads(found)) if found is not None else None), text
    except orjson.JSONDecodeError:
        return None, text


def _cluster_error(asked: _Asked) -> dict[str, Any]:
    reason = asked.document.get("error") if isinstance(asked.document, dict) else None
    return {"status": asked.status, "error": reason}


async def compare(state: Any, request: CompareRequest) -> dict[str, Any]:
    """Every variant's order for one query, beside the cluster's own (see the module docstring)."""
    config = state.config
    fields, text = await _query_fields(state, request.index)
    body = query_body(request.query, fields, request.size)
    asked: dict[bytes, asyncio.Task[_Asked]] = {}

    def ask(upstream_body: Mapping[str, Any], params: Sequence[tuple[str, str]]) -> asyncio.Task[_Asked]:
        key = dumps(dict(upstream_body)) + b"?" + urlencode(list(params)).encode()
        if key not in asked:  # variants that send the same request share the cluster's one answer
            asked[key] = asyncio.ensure_future(_ask(state, request.index, upstream_body, params))
        return asked[key]

    plain = await ask(body, [])
    cluster_hit_list = cluster_hits(plain.document) if plain.status == 200 else None
    result: dict[str, Any] = {
        "index": request.index, "query": request.query, "size": request.size, "request": body,
        "cluster": {
            "took_ms": {"cluster": round(plain.took_ms, 1), "cluster_took": _took(plain.document)},
            "hits": cluster_column(
                cluster_hit_list or [], request.size, lambda hit: build_document_text(hit.get("_source"), text)),
            **({} if cluster_hit_list is not None else {"error": _cluster_error(plain)}),
        },
        "variants": [],
    }
    for variant in request.variants:
        headers = console_headers(config, variant)
        options = RequestOptions(force=headers.get("X-Rerank"), variant=variant, query_override=None, explain=False)
        plan = await plan_search(config, state.resolver, request.index, body, [], options, state.searches.windows)
        entry: dict[str, Any] = {"variant": variant, "headers": headers}
        if not isinstance(plan, Rerank):  # served as the cluster's answer, untouched
            as_sent = cluster_hit_list or []
            entry.update(status=plan.skip_status, model=None, window=None,
                         took_ms={"cluster": round(plain.took_ms, 1), "cluster_took": _took(plain.document),
                                  "model": 0.0},
                         hits=reranked_column(cluster_order(as_sent, plan.skip_status), as_sent, request.size))
            result["variants"].append(entry)
            continue
        answer = await ask(plan.upstream_body, plan.upstream_params)
        hits = cluster_hits(answer.document) if answer.status == 200 else None
        entry.update(model=plan.model, window=plan.window, query_text=plan.query,
                     fusion=plan.settings.fusion.model_dump())
        if hits is None:  # the proxy passes the cluster's error on as it is
            entry.update(status="skipped; reason=cluster-error", error=_cluster_error(answer), hits=[],
                         took_ms={"cluster": round(answer.took_ms, 1), "cluster_took": _took(answer.document),
                                  "model": 0.0})
            result["variants"].append(entry)
            continue
        scored = await score_hits(plan, hits, state.engine)
        entry.update(
            status=scored.status,
            took_ms={"cluster": round(answer.took_ms, 1), "cluster_took": _took(answer.document),
                     "model": round(scored.took_ms, 1)},
            hits=reranked_column(scored, hits, request.size, plan.settings.chunking),
        )
        result["variants"].append(entry)
    return result


# ---- indices and eval -----------------------------------------------------------------------------------------


async def _cat(state: Any, what: str, columns: str) -> list[dict[str, Any]]:
    found = await state.upstream.get_json_bytes(
        f"/_cat/{what}?format=json&h={columns}&expand_wildcards=open".encode())
    try:
        rows = orjson.loads(found) if found is not None else []
    except orjson.JSONDecodeError:
        return []
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


async def _reranked_here(state: Any, name: str) -> dict[str, Any]:
    resolution = await state.resolver.resolve(name)
    enabled = resolution.settings.enabled if resolution.settings is not None else False
    return {"rule": resolution.rule, "reranked": enabled}


async def indices(state: Any) -> dict[str, Any]:
    """What the page offers to search: the cluster's open indices and aliases (not the system or hidden ones, whose
    names start with a dot), each with the config rule that covers it, and the variants and experiments."""
    config = state.config
    index_rows, alias_rows = await asyncio.gather(
        _cat(state, "indices", "index,health,docs.count"), _cat(state, "aliases", "alias,index"))
    listed = []
    for row in sorted(index_rows, key=lambda r: str(r.get("index"))):
        name = row.get("index")
        if isinstance(name, str) and not name.startswith("."):
            listed.append({"name": name, "health": row.get("health"), "docs": row.get("docs.count"),
                           **await _reranked_here(state, name)})
    aliases: dict[str, list[str]] = {}
    for row in alias_rows:
        alias, index = row.get("alias"), row.get("index")
        if isinstance(alias, str) and isinstance(index, str) and not alias.startswith("."):
            aliases.setdefault(alias, []).append(index)
    return {
        "indices": listed,
        "aliases": [{"name": name, "indices": sorted(names), **await _reranked_here(state, name)}
                    for name, names in sorted(aliases.items())],
        "variants": [CONTROL, *config.variants],
        "experiments": {name: experiment.model_dump() for name, experiment in config.experiments.items()},
        "eval_json": config.console.eval_json is not None,
    }


class EvalUnreadable(Exception):
    """The eval file named in the config cannot be read, or is not an eval's results."""


def read_eval(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    """`{dataset: {run: {measure: value}}}` from the file `rerank-proxy eval --json` writes; raises EvalUnreadable."""
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as err:
        raise EvalUnreadable(f"console.eval_json: cannot read {path}: {err.strerror or err}") from None
    except orjson.JSONDecodeError:
        raise EvalUnreadable(f"console.eval_json: {path} is not JSON") from None
    shaped = isinstance(data, dict) and all(
        isinstance(runs, dict) and all(
            isinstance(measures, dict) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in measures.values())
            for measures in runs.values())
        for runs in data.values())
    if not shaped:
        raise EvalUnreadable(f"console.eval_json: {path} is not `rerank-proxy eval --json` output "
                             "({dataset: {run: {measure: number}}})")
    results: dict[str, dict[str, dict[str, float]]] = data
    return results


async def eval_results(state: Any) -> tuple[int, dict[str, Any]]:
    path = state.config.console.eval_json
    if path is None:  # not an error: the page says how to set it
        return 200, {"configured": False, "results": None}
    try:
        results = await asyncio.to_thread(read_eval, path)
    except EvalUnreadable as err:
        return 404, {"configured": True, "path": str(path), "error": str(err)}
    return 200, {"configured": True, "path": str(path), "results": results}


# ---- dispatch --------------------------------------------------------------------------------------------------


async def console_reply(incoming: Any, state: Any, rest: str) -> Reply:
    """`rest`: the path below `/_rerank_proxy/ui/`, slashes stripped. Reached only past the admin guard."""
    method = incoming.head.method
    if rest == "api" or rest.startswith("api/"):
        action = rest[len("api/"):]
        if action == "indices" and method == "GET":
            return _api_reply(200, await indices(state))
        if action == "eval" and method == "GET":
            status, document = await eval_results(state)
            return _api_reply(status, document)
        if action == "compare" and method == "POST":
            raw = await incoming.body.read(MAX_COMPARE_BODY)
            if raw is None:
                return _bad_request(f"the compare request is larger than {MAX_COMPARE_BODY} bytes")
            try:
                request = CompareRequest.model_validate_json(raw)
            except ValidationError as err:
                return _bad_request("; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()))
            unknown = [v for v in request.variants if v != CONTROL and v not in state.config.variants]
            if unknown:
                return _bad_request(f"unknown variant(s) {', '.join(unknown)}; configured: "
                                    f"{', '.join([CONTROL, *state.config.variants])}")
            return _api_reply(200, await compare(state, request))
        return es_error_reply(404, "rerank_proxy_admin_exception",
                              f"no console endpoint [{method} {incoming.head.path}]")
    name = static_name(rest)
    if name is not None and method in ("GET", "HEAD"):
        return static_reply(name)
    return es_error_reply(404, "rerank_proxy_admin_exception", f"no console file [{method} {incoming.head.path}]")
