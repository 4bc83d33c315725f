#!/usr/bin/env python3
"""Run an Elasticsearch/OpenSearch REST YAML test suite against a URL (a cluster, or rerank-proxy in front of one).

The suite folder holds `api/*.json` (the REST API specs: name -> paths, methods, params) and `test/**/*.yml` (the
tests), as the clusters' `rest-api-spec` artifacts lay them out; `--suite` may point at that folder or at one above
it. Each test runs as the clusters' own runners run it: the file's `setup`, the test, the file's `teardown`, then the
cluster is wiped (indices, data streams, templates, pipelines, stored scripts, snapshot repositories, cluster
settings). The suite wipes the cluster: never point it at a cluster that holds anything you want to keep.

    python -m scripts.rest_suite --url http://127.0.0.1:19301 --suite /tmp/rest-suites/opensearch \
        --json out.json [--only PATTERN] [--headers 'X-Rerank-Variant: control'] [--trace]

Per test: pass, fail (with the first failing assertion) or skip (with the reason). `--trace` also keeps, for every
request a test sent, the request and the answer (status, headers, body, cut at a few KB), so that two runs can be
compared answer by answer, not only by outcome.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import operator
import re
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
import yaml

# Test-runner features this runner implements (a test that needs another one is skipped).
SUPPORTED_FEATURES = {
    "regex", "headers", "warnings", "allowed_warnings", "warnings_regex", "allowed_warnings_regex", "contains",
    "stash_in_path", "stash_in_key", "embedded_stash_key", "arbitrary_key", "default_shards", "yaml",
    "transform_and_set", "close_to", "is_after", "exists", "stash_path_replace", "gtelte",
}

CATCH_STATUS = {
    "bad_request": {400}, "unauthorized": {401}, "forbidden": {403}, "missing": {404}, "request_timeout": {408},
    "conflict": {409}, "unavailable": {503},
}

TRACE_BODY_CHARS = 4000
MISSING = object()


# ---------------------------------------------------------------------------------------------------------------------
# YAML as the clusters' runners read it: YAML 1.1 scalars, but no timestamps and only true/false as booleans.

class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool")]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml_docs(text: str) -> list[Any]:
    return [doc for doc in yaml.load_all(text, Loader=_Loader) if doc is not None]


# ---------------------------------------------------------------------------------------------------------------------
# Versions and skips

FLAVOR = "elasticsearch"


def parse_version(text: str) -> tuple[int, ...]:
    """A comparable version. On OpenSearch, versions 4.x-7.x are the legacy Elasticsearch versions it forked from,
    which sort below every OpenSearch version (1.0.0 > 7.10.2), as OpenSearch's own runner orders them."""
    nums = re.findall(r"\d+", str(text).split("-")[0])
    ver = tuple(int(n) for n in nums[:3]) + (0,) * (3 - len(nums[:3]))
    if FLAVOR == "opensearch":
        return (0,) + ver if ver[0] >= 4 else (1,) + ver
    return ver


def version_in_ranges(version: tuple[int, ...], spec: str) -> bool:
    spec = str(spec).strip()
    if spec.lower() == "all":
        return True
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if " - " in part or part.startswith("-") or part.endswith("-"):
            lo, _, hi = part.partition("-") if " - " not in part else part.partition(" - ")
            lo, hi = lo.strip(), hi.strip()
            low = parse_version(lo) if lo else (-1,)
            high = parse_version(hi) if hi else (10**6,)
            if low <= version <= high:
                return True
        elif parse_version(part) == version:
            return True
    return False


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def skip_reason(steps: list[Any], version: tuple[int, ...], flavor: str) -> str | None:
    """The reason to skip a section whose steps these are, or None."""
    for step in steps:
        if not isinstance(step, dict) or len(step) != 1:
            continue
        (kind, body), = step.items()
        if kind not in ("skip", "requires"):
            continue
        body = body or {}
        if kind == "skip":
            if "version" in body and version_in_ranges(version, body["version"]):
                return f"version {body['version']}: {body.get('reason', '')}".strip()
            for feature in _as_list(body.get("features")):
                if feature not in SUPPORTED_FEATURES:
                    return f"feature {feature} not supported by this runner"
            for name in ("awaits_fix", "known_issues"):
                if name in body:
                    return f"{name}: {body.get(name)}"
            if "cluster_features" in body:
                if all(_cluster_feature(f, version) for f in _as_list(body["cluster_features"])):
                    return f"cluster_features {body['cluster_features']}: {body.get('reason', '')}"
            if "os" in body:
                return f"os {body['os']}"
        else:
            for feature in _as_list(body.get("test_runner_features")):
                if feature not in SUPPORTED_FEATURES:
                    return f"test runner feature {feature} not supported by this runner"
            for feature in _as_list(body.get("cluster_features")):
                if not _cluster_feature(feature, version):
                    return f"needs cluster feature {feature}"
            if body.get("capabilities"):
                return "needs capabilities checks (not supported by this runner)"
    return None


def _cluster_feature(name: str, version: tuple[int, ...]) -> bool:
    """Historical version features (`gte_v8.1.0`) are judged by the version; others are taken as absent."""
    m = re.fullmatch(r"gte_v(\d+\.\d+\.\d+)", str(name))
    if m:
        return version >= parse_version(m.group(1))
    return False


# ---------------------------------------------------------------------------------------------------------------------
# API specs

@dataclass
class ApiPath:
    path: str
    methods: list[str]
    parts: set[str]


@dataclass
class Api:
    name: str
    paths: list[ApiPath]
    params: set[str]
    body: dict[str, Any] | None


def load_specs(api_dir: Path) -> dict[str, Api]:
    specs: dict[str, Api] = {}
    for file in sorted(api_dir.glob("*.json")):
        if file.name.startswith("_"):
            continue
        data = json.loads(file.read_text())
        for name, spec in data.items():
            paths = []
            for p in spec["url"]["paths"]:
                parts = set(p.get("parts") or {}) | set(re.findall(r"\{(\w+)\}", p["path"]))
                paths.append(ApiPath(p["path"], list(p["methods"]), parts))
            specs[name] = Api(name, paths, set(spec.get("params") or {}), spec.get("body"))
    return specs


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_param_text(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(value)
    return str(value)


def build_request(api: Api, args: dict[str, Any]) -> tuple[str, str, dict[str, str], bytes | None, str | None]:
    """(method, path, query params, body bytes, content type) for a `do` of `api` with `args`."""
    args = dict(args)
    body = args.pop("body", MISSING)
    given = {k for k in args}
    candidates = [p for p in api.paths if p.parts <= given]
    if not candidates:
        raise RunnerError(f"no path of {api.name} fits params {sorted(given)}")
    best = max(candidates, key=lambda p: len(p.parts))
    path = best.path
    for part in best.parts:
        value = _param_text(args.pop(part))
        path = path.replace("{" + part + "}", urllib.parse.quote(value, safe=",*"))
    query = {k: _param_text(v) for k, v in args.items()}
    data: bytes | None = None
    ctype: str | None = None
    if body is not MISSING and body is not None:
        bulk = (api.body or {}).get("serialize") == "bulk"
        if isinstance(body, list):
            lines = [b if isinstance(b, str) else json.dumps(b) for b in body]
            data = ("\n".join(lines) + "\n").encode()
            ctype = "application/x-ndjson"
        elif isinstance(body, str):
            data = body.encode()
            if bulk and not body.endswith("\n"):
                data += b"\n"
            ctype = "application/x-ndjson" if bulk else "application/json"
        else:
            data = json.dumps(body).encode()
            ctype = "application/json"
    methods = best.methods
    method = methods[0]
    if data is not None and method in ("GET", "HEAD", "DELETE") and "POST" in methods:
        method = "POST"
    return method, path, query, data, ctype


class RunnerError(Exception):
    pass


class AssertionFailed(Exception):
    pass


class SkipStep(Exception):
    pass


# ---------------------------------------------------------------------------------------------------------------------
# HTTP

@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    raw: bytes
    body: Any  # parsed JSON/YAML, text, or a boolean for HEAD

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Client:
    def __init__(self, url: str, extra_headers: dict[str, str], timeout: float = 120.0) -> None:
        self.base = url.rstrip("/")
        self.pool = urllib3.PoolManager(num_pools=2, maxsize=2, timeout=urllib3.Timeout(connect=10, read=timeout))
        self.extra_headers = extra_headers
        self.trace: list[dict[str, Any]] | None = None

    def request(self, method: str, path: str, query: dict[str, str] | None = None, body: bytes | None = None,
                ctype: str | None = None, headers: dict[str, str] | None = None, record: bool = True) -> Response:
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode(query, safe=",*")
        hdrs = dict(self.extra_headers)
        if ctype and body is not None:
            hdrs["Content-Type"] = ctype
        for k, v in (headers or {}).items():
            hdrs[str(k)] = str(v)
        started = time.monotonic()
        r = self.pool.request(method, url, body=body, headers=hdrs, retries=False, redirect=False,
                              preload_content=True, decode_content=True)
        raw = r.data or b""
        resp_headers = list(r.headers.items())
        resp = Response(r.status, resp_headers, raw, decode_body(method, r.status, resp_headers, raw))
        if record and self.trace is not None:
            self.trace.append({
                "method": method, "path": path, "query": query or {},
                "req_headers": {k: v for k, v in hdrs.items() if k not in self.extra_headers},
                "req_body": (body or b"")[:TRACE_BODY_CHARS].decode("utf-8", "replace") if body else None,
                "status": r.status, "headers": resp_headers,
                "body": raw[:TRACE_BODY_CHARS].decode("utf-8", "replace"), "body_len": len(raw),
                "body_sha1": hashlib.sha1(raw).hexdigest(), "ms": round((time.monotonic() - started) * 1000, 1),
            })
        return resp


def decode_body(method: str, status: int, headers: list[tuple[str, str]], raw: bytes) -> Any:
    if method == "HEAD":
        return 200 <= status < 300
    ctype = next((v for k, v in headers if k.lower() == "content-type"), "").lower()
    if not raw:
        return "" if "json" not in ctype else None
    if "json" in ctype:
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")
    if "yaml" in ctype:
        try:
            return yaml.load(raw.decode(), Loader=_Loader)
        except yaml.YAMLError:
            return raw.decode("utf-8", "replace")
    if "cbor" in ctype or "smile" in ctype:
        return raw
    return raw.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------------------------------
# Stash, paths, assertions

_EMBEDDED = re.compile(r"\$\{([^}]+)\}")


class Stash:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.last: Any = None

    def get(self, name: str) -> Any:
        if name == "body":
            return self.last
        if name not in self.values:
            # `$body.a.b`, `${_stash.path}`-style paths into the last answer or a stashed value
            head, _, rest = name.partition(".")
            if rest and (head == "body" or head in self.values):
                return lookup(self.last if head == "body" else self.values[head], rest, self)
            raise RunnerError(f"stash has no {name!r}")
        return self.values[name]

    def resolve(self, value: Any) -> Any:
        if isinstance(value, str):
            if value.startswith("$") and not value.startswith("${") and re.fullmatch(r"\$[\w.]+", value):
                return self.get(value[1:])
            if "${" in value:
                return _EMBEDDED.sub(lambda m: _text(self.get(m.group(1))), value)
            return value
        if isinstance(value, dict):
            return {self.resolve(k) if isinstance(k, str) else k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def split_path(path: str) -> list[str]:
    parts: list[str] = []
    cur = ""
    i = 0
    while i < len(path):
        ch = path[i]
        if ch == "\\" and i + 1 < len(path) and path[i + 1] == ".":
            cur += "."
            i += 2
            continue
        if ch == ".":
            parts.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    parts.append(cur)
    return parts


def lookup(obj: Any, path: str, stash: Stash) -> Any:
    path = str(path)
    if path in ("", "$body"):
        return obj
    if "${" in path:
        path = _EMBEDDED.sub(lambda m: _text(stash.get(m.group(1))), path)
    cur = obj
    for part in split_path(path):
        if part.startswith("$") and len(part) > 1:
            part = _text(stash.get(part[1:]))
        if cur is MISSING or cur is None:
            return MISSING
        if isinstance(cur, list):
            try:
                cur = cur[int(part)]
            except (ValueError, IndexError):
                return MISSING
        elif isinstance(cur, dict):
            if part == "_arbitrary_key_":
                if not cur:
                    return MISSING
                cur = next(iter(cur))
                continue
            cur = cur.get(part, MISSING)
        else:
            return MISSING
    return cur


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def equal(expected: Any, actual: Any) -> bool:
    if _num(expected) and _num(actual):
        return float(expected) == float(actual)
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(equal(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(equal(e, a) for e, a in zip(expected, actual))
    return type(expected) is type(actual) and expected == actual


def _show(value: Any, limit: int = 300) -> str:
    if value is MISSING:
        return "<missing>"
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_regex(value: Any) -> bool:
    return isinstance(value, str) and len(value.strip()) > 1 and value.strip().startswith("/") \
        and value.strip().endswith("/")


def _regex(value: str, verbose: bool = True) -> re.Pattern[str]:
    """`match` regexes are read in comments mode (whitespace ignored), `catch` regexes as they are."""
    src = value.strip()[1:-1]
    try:
        return re.compile(src, re.VERBOSE if verbose else 0)
    except re.error:
        return re.compile(src)


def assert_match(path: str, expected: Any, actual: Any) -> None:
    if _is_regex(expected):
        if actual is MISSING or actual is None:
            raise AssertionFailed(f"match {path}: expected /regex/, got {_show(actual)}")
        text = _text(actual) if not isinstance(actual, str) else actual
        if not _regex(expected).search(text):
            raise AssertionFailed(f"match {path}: {_show(text, 500)} does not match {expected.strip()[:200]}")
        return
    if expected is None:
        if actual is not MISSING and actual is not None:
            raise AssertionFailed(f"match {path}: expected null, got {_show(actual)}")
        return
    if actual is MISSING or not equal(expected, actual):
        raise AssertionFailed(f"match {path}: expected {_show(expected)}, got {_show(actual)}")


def _truthy(value: Any) -> bool:
    return not (value is MISSING or value is None or value is False or value == "" or value == "false"
                or (_num(value) and value == 0))


def _contains(actual: Any, expected: Any) -> bool:
    if isinstance(actual, list):
        for item in actual:
            if equal(expected, item):
                return True
            if isinstance(expected, dict) and isinstance(item, dict) and \
                    all(k in item and equal(v, item[k]) for k, v in expected.items()):
                return True
        return False
    if isinstance(actual, dict) and isinstance(expected, dict):
        return all(k in actual and equal(v, actual[k]) for k, v in expected.items())
    if isinstance(actual, str) and isinstance(expected, str):
        return expected in actual
    return False


# ---------------------------------------------------------------------------------------------------------------------
# Running

@dataclass
class Result:
    file: str
    test: str
    status: str  # pass | fail | skip
    message: str = ""
    seconds: float = 0.0
    trace: list[dict[str, Any]] = field(default_factory=list)


class Runner:
    def __init__(self, client: Client, wipe_client: Client, specs: dict[str, Api], version: tuple[int, ...],
                 flavor: str) -> None:
        self.client = client
        self.wipe_client = wipe_client
        self.specs = specs
        self.version = version
        self.flavor = flavor

    # -- do -----------------------------------------------------------------------------------------------------------
    def do(self, spec: dict[str, Any], stash: Stash) -> None:
        spec = dict(spec)
        catch = spec.pop("catch", None)
        headers = stash.resolve(spec.pop("headers", None) or {})
        warnings = _as_list(spec.pop("warnings", None))
        warnings_regex = _as_list(spec.pop("warnings_regex", None))
        spec.pop("allowed_warnings", None)
        spec.pop("allowed_warnings_regex", None)
        spec.pop("node_selector", None)
        if len(spec) != 1:
            raise RunnerError(f"do with several APIs: {sorted(spec)}")
        (api_name, args), = spec.items()
        if catch == "param":
            raise SkipStep("catch: param (client-side validation) not run")
        api = self.specs.get(api_name)
        if api is None:
            raise RunnerError(f"no API spec for {api_name}")
        args = stash.resolve(args or {})
        ignore = {int(x) for x in _as_list(args.pop("ignore", None))}
        method, path, query, data, ctype = build_request(api, args)
        try:
            resp = self.client.request(method, path, query, data, ctype, headers)
        except urllib3.exceptions.HTTPError as err:
            raise AssertionFailed(f"{method} {path}: transport error {err!r}") from err
        stash.last = resp.body
        where = f"{api_name} ({method} {path})"
        if catch is not None:
            if catch in CATCH_STATUS:
                if resp.status not in CATCH_STATUS[catch]:
                    raise AssertionFailed(f"{where}: expected catch {catch}, got {resp.status} "
                                          f"{_show(resp.body, 300)}")
            elif catch == "request":
                if resp.status < 400:
                    raise AssertionFailed(f"{where}: expected catch request, got {resp.status}")
            elif _is_regex(catch):
                if resp.status < 400:
                    raise AssertionFailed(f"{where}: expected an error matching {catch}, got {resp.status}")
                text = resp.raw.decode("utf-8", "replace")
                if not _regex(catch, verbose=False).search(text):
                    raise AssertionFailed(f"{where}: error {resp.status} {_show(text, 500)} does not match {catch}")
            else:
                raise RunnerError(f"unknown catch {catch!r}")
        elif resp.status >= 400 and resp.status not in ignore and not (method == "HEAD" and resp.status == 404):
            raise AssertionFailed(f"{where}: status {resp.status} {_show(resp.body, 500)}")
        if warnings or warnings_regex:
            got = " | ".join(resp.header_values("Warning"))
            for w in warnings:
                if str(w) not in got.replace('\\"', '"'):
                    raise AssertionFailed(f"{where}: expected warning {w!r}, got {got[:300]!r}")
            for w in warnings_regex:
                if not re.search(str(w), got):
                    raise AssertionFailed(f"{where}: expected warning /{w}/, got {got[:300]!r}")

    # -- steps --------------------------------------------------------------------------------------------------------
    def step(self, step: dict[str, Any], stash: Stash) -> None:
        if not isinstance(step, dict) or len(step) != 1:
            raise RunnerError(f"bad step {step!r}")
        (kind, body), = step.items()
        if kind in ("skip", "requires"):
            return
        if kind == "do":
            self.do(body, stash)
            return
        last = stash.last
        if kind == "set":
            for path, name in body.items():
                value = lookup(last, path, stash)
                if value is MISSING:
                    raise AssertionFailed(f"set {path}: no such path in {_show(last)}")
                stash.values[name] = value
            return
        if kind == "transform_and_set":
            for name, expr in body.items():
                m = re.fullmatch(r"#base64EncodeCredentials\((\w+),\s*(\w+)\)", str(expr).strip())
                if not m:
                    raise RunnerError(f"transform_and_set {expr!r} not supported")
                a, b = (lookup(last, p, stash) for p in m.groups())
                stash.values[name] = base64.b64encode(f"{_text(a)}:{_text(b)}".encode()).decode()
            return
        if kind in ("is_true", "is_false", "exists"):
            path = str(body) if body is not None else ""
            actual = lookup(last, path, stash)
            if kind == "is_true" and not _truthy(actual):
                raise AssertionFailed(f"is_true {path}: got {_show(actual)}")
            if kind == "is_false" and _truthy(actual):
                raise AssertionFailed(f"is_false {path}: got {_show(actual)}")
            if kind == "exists" and actual is MISSING:
                raise AssertionFailed(f"exists {path}: missing")
            return
        if not isinstance(body, dict):
            raise RunnerError(f"bad {kind} {body!r}")
        for path, expected in body.items():
            if not isinstance(path, str):
                path_text = str(path)
            elif path == "$body" or path.startswith("$body."):
                path_text = path[len("$body."):] if path != "$body" else ""
            else:
                path_text = _text(stash.resolve(path))
            actual = lookup(last, path_text, stash)
            expected = stash.resolve(expected)
            if kind == "match":
                assert_match(path_text, expected, actual)
            elif kind == "length":
                if actual is MISSING or not hasattr(actual, "__len__"):
                    raise AssertionFailed(f"length {path_text}: got {_show(actual)}")
                if len(actual) != int(expected):
                    raise AssertionFailed(f"length {path_text}: expected {expected}, got {len(actual)}")
            elif kind in ("gt", "gte", "lt", "lte"):
                if actual is MISSING or actual is None:
                    raise AssertionFailed(f"{kind} {path_text}: missing")
                a, e = actual, expected
                if _num(e) and isinstance(a, str):
                    try:
                        a = float(a)
                    except ValueError:
                        pass
                try:
                    good = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}[kind](a, e)
                except TypeError:
                    good = False
                if not good:
                    raise AssertionFailed(f"{kind} {path_text}: {_show(actual)} vs {_show(expected)}")
            elif kind == "contains":
                if not _contains(actual, expected):
                    raise AssertionFailed(f"contains {path_text}: {_show(expected)} not in {_show(actual)}")
            elif kind == "close_to":
                value, error = expected["value"], expected.get("error", 0)
                if not _num(actual) or math.fabs(actual - value) > error:
                    raise AssertionFailed(f"close_to {path_text}: {_show(actual)} not within {error} of {value}")
            elif kind == "is_after":
                if not (isinstance(actual, str) and isinstance(expected, str) and actual > expected):
                    raise AssertionFailed(f"is_after {path_text}: {_show(actual)} vs {_show(expected)}")
            else:
                raise RunnerError(f"unknown step {kind}")

    def section(self, steps: list[Any], stash: Stash) -> None:
        for i, st in enumerate(steps or []):
            try:
                self.step(st, stash)
            except SkipStep:
                continue
            except AssertionFailed as err:
                raise AssertionFailed(f"step {i + 1}: {err}") from None

    # -- files --------------------------------------------------------------------------------------------------------
    def run_file(self, file: Path, rel: str, only: re.Pattern[str] | None,
                 exclude: re.Pattern[str] | None = None) -> list[Result]:
        try:
            docs = load_yaml_docs(file.read_text())
        except yaml.YAMLError as err:
            return [Result(rel, "<file>", "fail", f"YAML error: {err}")]
        setup: list[Any] = []
        teardown: list[Any] = []
        tests: list[tuple[str, list[Any]]] = []
        for doc in docs:
            if not isinstance(doc, dict):
                continue
            for name, steps in doc.items():
                if name == "setup":
                    setup = steps or []
                elif name == "teardown":
                    teardown = steps or []
                elif name == "requires" or name == "skip":  # ES 9 file-level requirements
                    setup = [{name: steps}] + setup
                else:
                    tests.append((str(name), steps or []))
        results = []
        file_skip = skip_reason(setup, self.version, self.flavor)
        for name, steps in tests:
            if only and not only.search(f"{rel}::{name}"):
                continue
            if exclude and exclude.search(f"{rel}::{name}"):
                continue
            reason = file_skip or skip_reason(steps, self.version, self.flavor)
            if reason:
                results.append(Result(rel, name, "skip", reason))
                continue
            results.append(self.run_test(rel, name, setup, steps, teardown))
        return results

    def run_test(self, rel: str, name: str, setup: list[Any], steps: list[Any], teardown: list[Any]) -> Result:
        started = time.monotonic()
        trace: list[dict[str, Any]] = []
        if self.client.trace is not None:
            self.client.trace = trace
        stash = Stash()
        status, message = "pass", ""
        try:
            try:
                self.section(setup, stash)
            except AssertionFailed as err:
                raise AssertionFailed(f"setup {err}") from None
            self.section(steps, stash)
        except AssertionFailed as err:
            status, message = "fail", str(err)
        except RunnerError as err:
            status, message = "fail", f"runner: {err}"
        except Exception as err:  # noqa: BLE001 - a broken test must not stop the suite
            status, message = "fail", f"runner error: {err!r}"
        try:
            self.section(teardown, Stash())
        except Exception as err:  # noqa: BLE001
            if status == "pass":
                status, message = "fail", f"teardown {err}"
        if self.client.trace is not None:
            self.client.trace = []
        try:
            wipe(self.wipe_client, self.flavor)
        except Exception as err:  # noqa: BLE001
            print(f"  (wipe failed: {err!r})", file=sys.stderr)
        return Result(rel, name, status, message, round(time.monotonic() - started, 2), trace)


# ---------------------------------------------------------------------------------------------------------------------
# Wiping the cluster between tests

def _json(client: Client, method: str, path: str, query: dict[str, str] | None = None,
          body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    r = client.request(method, path, query, data, "application/json" if data else None, record=False)
    return r.status, r.body


def wipe(client: Client, flavor: str) -> None:
    _json(client, "DELETE", "/_search/scroll/_all")
    if flavor == "opensearch":
        _json(client, "DELETE", "/_search/point_in_time/_all")
    st, streams = _json(client, "GET", "/_data_stream", {"expand_wildcards": "all"} if flavor != "opensearch" else None)
    if st == 200 and isinstance(streams, dict):
        names = [d["name"] for d in streams.get("data_streams", [])]
        if names:
            _json(client, "DELETE", "/_data_stream/" + ",".join(names),
                  {"expand_wildcards": "all"} if flavor != "opensearch" else None)
    st, rows = _json(client, "GET", "/_cat/indices", {"format": "json", "h": "index", "expand_wildcards": "all"})
    if st == 200 and isinstance(rows, list):
        names = [r["index"] for r in rows if not r["index"].startswith((".security", ".opendistro_security"))]
        if names:
            st, _ = _json(client, "DELETE", "/" + ",".join(urllib.parse.quote(n, safe="") for n in names),
                          {"expand_wildcards": "all", "ignore_unavailable": "true"})
            if st >= 400:
                for n in names:
                    _json(client, "DELETE", "/" + urllib.parse.quote(n, safe=""), {"expand_wildcards": "all"})
    for path in ("/_index_template/*", "/_component_template/*", "/_template/*", "/_ingest/pipeline/*"):
        _json(client, "DELETE", path)
    if flavor == "opensearch":
        _json(client, "DELETE", "/_search/pipeline/*")
    st, state = _json(client, "GET", "/_cluster/state/metadata", {"filter_path": "metadata.stored_scripts"})
    if st == 200 and isinstance(state, dict):
        for sid in (state.get("metadata", {}).get("stored_scripts") or {}):
            _json(client, "DELETE", "/_scripts/" + urllib.parse.quote(sid, safe=""))
    st, repos = _json(client, "GET", "/_snapshot/_all")
    if st == 200 and isinstance(repos, dict):
        for repo in repos:
            st, snaps = _json(client, "GET", f"/_snapshot/{repo}/_all")
            if st == 200 and isinstance(snaps, dict):
                for snap in snaps.get("snapshots", []):
                    _json(client, "DELETE", f"/_snapshot/{repo}/{snap['snapshot']}")
            _json(client, "DELETE", f"/_snapshot/{repo}")
    st, settings = _json(client, "GET", "/_cluster/settings")
    if st == 200 and isinstance(settings, dict) and (settings.get("persistent") or settings.get("transient")):
        _json(client, "PUT", "/_cluster/settings", body={"persistent": {"*": None}, "transient": {"*": None}})
    _json(client, "GET", "/_cluster/health", {"wait_for_no_initializing_shards": "true", "timeout": "30s"})


# ---------------------------------------------------------------------------------------------------------------------

def cluster_info(client: Client) -> tuple[str, tuple[int, ...], str]:
    st, body = _json(client, "GET", "/_nodes/_local", {"filter_path": "nodes.*.version,nodes.*.build_flavor"})
    version = "0.0.0"
    if st == 200 and isinstance(body, dict) and body.get("nodes"):
        version = next(iter(body["nodes"].values()))["version"]
    st, root = _json(client, "GET", "/")
    flavor = "elasticsearch"
    if st == 200 and isinstance(root, dict):
        if root.get("version", {}).get("distribution") == "opensearch":
            flavor = "opensearch"
        version = root.get("version", {}).get("number", version)
    elif st != 200:
        # Elasticsearch's integ-test-zip has no `GET /`; OpenSearch always has one.
        flavor = "elasticsearch"
    return flavor, parse_version(version), version


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="where to send the tests (cluster or proxy)")
    ap.add_argument("--wipe-url", help="where to send the wipes between tests (default: --url)")
    ap.add_argument("--suite", required=True, help="folder holding api/ and test/ (or rest-api-spec/ above them)")
    ap.add_argument("--api", help="API spec folder, if not the suite's api/")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--only", help="regex on 'DIR/FILE.yml::test name'")
    ap.add_argument("--exclude", help="regex on 'DIR/FILE.yml::test name' to leave out")
    ap.add_argument("--headers", action="append", default=[], help="'Name: value' sent with every test request")
    ap.add_argument("--trace", action="store_true", help="keep every request and answer in the JSON")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    root = Path(args.suite)
    if (root / "rest-api-spec").is_dir():
        root = root / "rest-api-spec"
    api_dir = Path(args.api) if args.api else root / "api"
    test_dir = root / "test"
    specs = load_specs(api_dir)
    extra: dict[str, str] = {}
    for h in args.headers:
        k, _, v = h.partition(":")
        extra[k.strip()] = v.strip()
    client = Client(args.url, extra)
    if args.trace:
        client.trace = []
    wipe_client = Client(args.wipe_url or args.url, {})
    global FLAVOR
    flavor, _, version_text = cluster_info(wipe_client)
    FLAVOR = flavor
    version = parse_version(version_text)
    print(f"# {flavor} {version_text} at {args.url} ({len(specs)} APIs)", flush=True)
    runner = Runner(client, wipe_client, specs, version, flavor)
    only = re.compile(args.only) if args.only else None
    exclude = re.compile(args.exclude) if args.exclude else None
    files = sorted(test_dir.rglob("*.yml")) + sorted(test_dir.rglob("*.yaml"))
    wipe(wipe_client, flavor)
    results: list[Result] = []
    started = time.monotonic()
    for file in files:
        rel = str(file.relative_to(test_dir))
        for r in runner.run_file(file, rel, only, exclude):
            key = f"{r.file}::{r.test}"
            results.append(r)
            if not args.quiet or r.status == "fail":
                line = f"{r.status.upper():4} {key}"
                if r.status != "pass":
                    line += f" -- {r.message[:400]}"
                print(line, flush=True)
    counts = {s: sum(1 for r in results if r.status == s) for s in ("pass", "fail", "skip")}
    print(f"# {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped "
          f"in {time.monotonic() - started:.0f}s", flush=True)
    if args.json:
        out = {
            "url": args.url, "suite": str(root), "flavor": flavor, "version": version_text,
            "headers": extra, "counts": counts, "features": sorted(SUPPORTED_FEATURES),
            "results": [{"file": r.file, "test": r.test, "status": r.status, "message": r.message,
                         "seconds": r.seconds, **({"trace": r.trace} if args.trace else {})} for r in results],
        }
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0 if counts["fail"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
