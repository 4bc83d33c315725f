"""The official Go, JavaScript and Java Elasticsearch clients (and the Go and JavaScript OpenSearch clients),
unchanged, pointed at the proxy.

Each client has a small program under tests/clients/<language>/ that runs the same script through the client's
normal API (search, search with `X-Rerank: off`, search with `X-Rerank-Explain`, `_msearch`, document and index
APIs on a scratch index) and prints one JSON object. The programs are built once into `.cache/clients/<language>/`
and rebuilt only when their sources change. A missing toolchain skips its client, except under CI, where it fails.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Target

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SOURCES = REPO / "tests" / "clients"
CACHE = REPO / ".cache" / "clients"
QUERY = "vitamin D deficiency and bone fractures in older adults"
OTHER_QUERY = "smoking and lung cancer risk"  # the second `_msearch` item; the programs hard-code it
BUILD_TIMEOUT_S = 900  # a first Maven build downloads the client and its plugins
RUN_TIMEOUT_S = 180


def _run(command: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`{' '.join(command)}` did not finish in {timeout}s:\n{exc.stderr or ''}")
    if done.returncode != 0:
        pytest.fail(f"`{' '.join(command)}` exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def _succeeds(command: list[str], cwd: Path, timeout: float) -> bool:
    done = subprocess.run(command, cwd=cwd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return done.returncode == 0


def _build_go(src: Path, out: Path) -> None:
    _run(["go", "build", "-buildvcs=false", "-o", f"{out}/", "./elasticsearch", "./opensearch"], src, BUILD_TIMEOUT_S)


def _build_js(src: Path, out: Path) -> None:
    # node resolves packages next to the script, so the scripts and their node_modules both live in the cache.
    for path in (p for p in src.iterdir() if p.is_file()):
        shutil.copy2(path, out / path.name)
    _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], out, BUILD_TIMEOUT_S,
         {"npm_config_update_notifier": "false"})


def _build_java(src: Path, out: Path) -> None:
    # Offline first: after the first resolve everything is in ~/.m2, and the online check costs seconds.
    if not _succeeds(["mvn", "-q", "-B", "-o", "package"], src, BUILD_TIMEOUT_S):
        _run(["mvn", "-q", "-B", "package"], src, BUILD_TIMEOUT_S)  # the pom builds into CACHE / "java"


@dataclass(frozen=True)
class Toolchain:
    name: str  # the folder under tests/clients, and under .cache/clients for its build
    tools: tuple[str, ...]
    build: Callable[[Path, Path], None]  # (sources, output folder): builds every program in the folder


@dataclass(frozen=True)
class Program:
    flavor: str  # which cluster's client: "elasticsearch" or "opensearch"
    toolchain: Toolchain
    command: Callable[[Path], list[str]]  # output folder -> how to run the built program

    def built(self) -> list[str]:
        """Builds the toolchain's folder unless its sources are unchanged since the last build."""
        chain = self.toolchain
        missing = [tool for tool in chain.tools if shutil.which(tool) is None]
        if missing:
            reason = f"{chain.name} client: {', '.join(missing)} not installed"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
        src, out = SOURCES / chain.name, CACHE / chain.name
        out.mkdir(parents=True, exist_ok=True)
        command = self.command(out)
        stamp, digest = out / ".sources.sha256", _digest(src)
        artifacts = [Path(arg) for arg in command if arg.startswith(str(out))]
        if not (stamp.exists() and stamp.read_text() == digest and all(p.exists() for p in artifacts)):
            chain.build(src, out)
            stamp.write_text(digest)
        return command


def _digest(src: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        sha.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    return sha.hexdigest()


GO = Toolchain("go", ("go",), _build_go)
JS = Toolchain("js", ("node", "npm"), _build_js)
JAVA = Toolchain("java", ("java", "mvn"), _build_java)
PROGRAMS = {
    "elasticsearch-go": Program("elasticsearch", GO, lambda out: [str(out / "elasticsearch")]),
    "elasticsearch-js": Program("elasticsearch", JS, lambda out: ["node", str(out / "elasticsearch.mjs")]),
    "elasticsearch-java": Program("elasticsearch", JAVA, lambda out: ["java", "-jar", str(out / "esclient.jar")]),
    "opensearch-go": Program("opensearch", GO, lambda out: [str(out / "opensearch")]),
    "opensearch-js": Program("opensearch", JS, lambda out: ["node", str(out / "opensearch.mjs")]),
}


def match(query: str) -> dict[str, Any]:
    return {"match": {"text": {"query": query}}}


def hit_ids(response: Any) -> list[str]:
    return [hit["_id"] for hit in response["hits"]["hits"]]


@dataclass
class Seen:
    client: dict[str, Any]  # what the client program printed
    python: dict[str, list[str]]  # hit ids of the same searches with the Python client


@pytest.fixture(scope="module", params=sorted(PROGRAMS))
def seen(request: pytest.FixtureRequest) -> Seen:
    """What one client program saw through the proxy (run once per client), beside what elasticsearch-py or
    opensearch-py sees for the same searches, through the proxy and straight to the cluster."""
    program = PROGRAMS[request.param]
    command = program.built()
    target: Target = request.getfixturevalue("es_target" if program.flavor == "elasticsearch" else "os_target")
    python = {
        "proxy": hit_ids(target.search(target.proxy, query=match(QUERY), size=10)),
        "proxy_other": hit_ids(target.search(target.proxy, query=match(OTHER_QUERY), size=10)),
        "direct": hit_ids(target.search(target.direct, query=match(QUERY), size=10)),
    }
    scratch = f"client-scratch-{request.param}"
    direct = target.client(target.direct)
    if direct.indices.exists(index=scratch):  # left by a run that crashed half-way
        direct.indices.delete(index=scratch)
    output = _run([*command, target.proxy, "scifact", QUERY, scratch], REPO, RUN_TIMEOUT_S)
    return Seen(json.loads(output), python)


def test_reranked_search_gives_the_same_order_as_the_python_client(seen):
    assert seen.client["reranked"] == {"ids": seen.python["proxy"], "status": "reranked"}
    assert seen.python["proxy"] != seen.python["direct"]  # else the comparison could not tell reranking from none


def test_rerank_off_header_gives_the_clusters_order(seen):
    assert seen.client["off"] == {"ids": seen.python["direct"], "status": "skipped; reason=header-off"}


def test_explain_fields_parse_in_the_client(seen):
    explained = seen.client["explain"]
    assert [hit["id"] for hit in explained] == seen.python["proxy"][:3]
    for hit in explained:
        assert hit["rerank_score"] == pytest.approx(hit["score"])
        assert hit["cluster_rank"] >= 1 and hit["cluster_score"] > 0


def test_msearch_reranks_each_search(seen):
    assert seen.client["msearch"] == [seen.python["proxy"], seen.python["proxy_other"]]
    assert seen.client["msearch_status"] == "reranked, reranked"


def test_document_and_index_apis_pass_through(seen):
    assert seen.client["passthrough"] == {
        "index_result": "created",
        "get_found": True,
        "get_source": {"title": "scratch", "text": "a small document"},
        "bulk_errors": False,
        "bulk_items": 2,
        "count_after_bulk": 1,
        "index_deleted": True,
    }
