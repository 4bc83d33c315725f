"""LocalCluster: the real clusters answer as the distributions they are; start failures and stop are clean.

The other tests need no JVM: a fake distribution (a Python script in place of bin/opensearch) pins the
process-group and cleanup behaviour, and a local HTTP server laid out like Maven Central pins the download.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rerank_proxy_tools.localcluster import DEFAULT_VERSIONS, ClusterStartError, LocalCluster


@pytest.mark.integration
def test_elasticsearch_node_reports_version_on_loopback(es_client) -> None:
    # The integ-test-zip leaves out the rest-root module, so `GET /` answers 405 there; ask the node instead.
    # The client itself checks the X-Elastic-Product header, so an OpenSearch here would raise.
    nodes = es_client.nodes.info(node_id="_local")["nodes"]
    (node,) = nodes.values()
    assert node["version"] == DEFAULT_VERSIONS["elasticsearch"]
    assert node["build_type"] == "zip"
    assert node["http"]["publish_address"].startswith("127.0.0.1:")


@pytest.mark.integration
def test_opensearch_root_reports_distribution_and_version(os_client) -> None:
    info = os_client.info()
    assert info["version"]["distribution"] == "opensearch"
    assert info["version"]["number"] == DEFAULT_VERSIONS["opensearch"]
    (node,) = os_client.nodes.info(node_id="_local")["nodes"].values()
    assert node["http"]["publish_address"].startswith("127.0.0.1:")


@pytest.mark.integration
@pytest.mark.parametrize("analyzer, text, tokens", [
    ("english", "The running dogs", ["run", "dog"]),
    ("cjk", "我们的东西", ["我们", "们的", "的东", "东西"]),
])
def test_opensearch_has_the_language_analyzers_of_analysis_common(os_client, analyzer, text, tokens) -> None:
    found = os_client.indices.analyze(body={"analyzer": analyzer, "text": text})
    assert [t["token"] for t in found["tokens"]] == tokens


def test_a_long_question_over_several_fields_passes_the_clause_limit(cluster) -> None:
    """1,500 clauses: over Lucene's old 1,024, which OpenSearch keeps unless told otherwise (Gorilla's questions
    over its record fields go past it)."""
    index = "clause-limit"
    body = json.dumps({"query": {"multi_match": {"query": " ".join(f"w{i}" for i in range(500)),
                                                 "fields": ["a", "b", "c"]}}}).encode()
    mapping = {"mappings": {"properties": {name: {"type": "text"} for name in "abc"}}}
    request = urllib.request.Request(f"{cluster.url}/{index}", data=json.dumps(mapping).encode(), method="PUT",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=60).close()
    try:
        search = urllib.request.Request(f"{cluster.url}/{index}/_search", data=body,
                                        headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(search, timeout=60) as response:
            assert json.load(response)["hits"]["hits"] == []
    finally:
        urllib.request.urlopen(urllib.request.Request(f"{cluster.url}/{index}", method="DELETE"), timeout=60).close()


def test_clusters_need_no_credentials(cluster) -> None:
    from urllib.request import urlopen

    with urlopen(f"{cluster.url}/_cluster/health", timeout=30) as resp:
        assert json.load(resp)["status"] in ("yellow", "green")


@pytest.mark.integration
def test_scifact_index_holds_the_whole_corpus_with_one_shard(scifact_cluster) -> None:
    from urllib.request import urlopen

    from tests.beir import corpus_size

    with urlopen(f"{scifact_cluster.url}/scifact/_count", timeout=30) as resp:
        assert json.load(resp)["count"] == corpus_size("scifact")
    with urlopen(f"{scifact_cluster.url}/scifact/_settings", timeout=30) as resp:
        assert json.load(resp)["scifact"]["settings"]["index"]["number_of_shards"] == "1"


_FAKE_NODE = """\
#!{python}
# Stands in for bin/opensearch: a launcher that spawns a long-lived child (like ES's CLI and server JVMs)
# and answers cluster health on the configured port.
import http.server, json, os, pathlib, subprocess, sys
conf = pathlib.Path(os.environ["OPENSEARCH_PATH_CONF"], "opensearch.yml").read_text()
settings = dict(line.split(": ", 1) for line in conf.splitlines())
for n in range(50):
    print(f"log line {{n}}")
sys.stdout.flush()
if {exit_code} is not None:
    sys.exit({exit_code})
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
pathlib.Path(os.environ["OPENSEARCH_TMPDIR"], "child.pid").write_text(str(child.pid))

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"status": "green"}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.HTTPServer(("127.0.0.1", json.loads(settings["http.port"])), Health).serve_forever()
"""


def _fake_distribution(cache: Path, version: str, exit_code: int | None) -> None:
    home = cache / f"opensearch-{version}"
    (home / "config").mkdir(parents=True)
    script = home / "bin" / "opensearch"
    script.parent.mkdir()
    script.write_text(_FAKE_NODE.format(python=sys.executable, exit_code=exit_code))
    script.chmod(0o755)
    for name in ("analysis-common", "lang-mustache"):  # installed already: no download
        module = home / "modules" / name
        module.mkdir(parents=True)
        (module / "plugin-descriptor.properties").write_text(f"name={name}\n")


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan may stay a zombie where nothing reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@pytest.fixture
def fake_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RERANK_PROXY_CACHE", str(tmp_path / "cache"))
    workdirs = tmp_path / "work"
    workdirs.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(workdirs))
    return tmp_path


def test_stop_kills_the_whole_process_group_and_removes_temp_data(fake_cache: Path) -> None:
    _fake_distribution(fake_cache / "cache", "0.0.ok", exit_code=None)
    cluster = LocalCluster("opensearch", "0.0.ok")
    url = cluster.start(timeout_s=60)
    try:
        assert url.startswith("http://127.0.0.1:")
        launcher = cluster._proc.pid
        child = int((cluster.log_path.parents[1] / "tmp" / "child.pid").read_text())
        assert _running(launcher) and _running(child)
    finally:
        cluster.stop()
    assert not _running(launcher)
    assert not _running(child)
    assert list((fake_cache / "work").iterdir()) == []


def test_failed_start_raises_with_last_40_log_lines(fake_cache: Path) -> None:
    _fake_distribution(fake_cache / "cache", "0.0.bad", exit_code=3)
    with pytest.raises(ClusterStartError) as failure:
        LocalCluster("opensearch", "0.0.bad").start(timeout_s=60)
    message = str(failure.value)
    assert "exited with code 3" in message
    assert "log line 49" in message and "log line 10\n" in message
    assert "log line 9\n" not in message
    assert list((fake_cache / "work").iterdir()) == []


@pytest.fixture
def fake_central(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A local HTTP server laid out like Maven Central, with `mvn` hidden so the direct download is used."""
    import functools
    import http.server
    import threading

    import rerank_proxy_tools.localcluster as localcluster

    repo = tmp_path / "central"
    repo.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(repo))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(localcluster, "_MAVEN_CENTRAL", f"http://127.0.0.1:{server.server_address[1]}")
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "mvn" else real_which(name, *a, **k))
    monkeypatch.setenv("RERANK_PROXY_CACHE", str(tmp_path / "cache"))
    yield repo
    server.shutdown()
    thread.join()


def _publish_zip(repo: Path, version: str, *, sha1: str | None = None) -> None:
    import hashlib
    import zipfile

    folder = repo / "org/opensearch/distribution/integ-test-zip/opensearch" / version
    folder.mkdir(parents=True)
    archive = folder / f"opensearch-{version}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        script = zipfile.ZipInfo(f"opensearch-{version}/bin/opensearch")
        script.external_attr = 0o100755 << 16
        zf.writestr(script, "#!/bin/sh\n")
        zf.writestr(f"opensearch-{version}/config/opensearch.yml", "")
    digest = sha1 or hashlib.sha1(archive.read_bytes()).hexdigest()
    (folder / f"opensearch-{version}.zip.sha1").write_text(digest)
    # The modules' jars, published bare.
    for group, name, jar_version in (("org/opensearch/plugin", "analysis-common", version),
                                     ("org/opensearch/plugin", "lang-mustache-client", version),
                                     ("com/github/spullara/mustache/java", "compiler", "0.9.14")):
        folder = repo / group / name / jar_version
        folder.mkdir(parents=True, exist_ok=True)
        jar = folder / f"{name}-{jar_version}.jar"
        with zipfile.ZipFile(jar, "w") as zf:
            zf.writestr(f"{name}.class", b"")
        (folder / f"{jar.name}.sha1").write_text(hashlib.sha1(jar.read_bytes()).hexdigest())


def test_fetch_without_maven_downloads_unpacks_executable_and_caches(fake_central: Path) -> None:
    from rerank_proxy_tools.localcluster import fetch_distribution

    _publish_zip(fake_central, "9.9.1")
    home = fetch_distribution("opensearch", "9.9.1")
    assert home.name == "opensearch-9.9.1"
    assert os.access(home / "bin" / "opensearch", os.X_OK)
    module = home / "modules" / "analysis-common"
    assert (module / "analysis-common-9.9.1.jar").is_file()
    descriptor = (module / "plugin-descriptor.properties").read_text()
    assert "classname=org.opensearch.analysis.common.CommonAnalysisPlugin\n" in descriptor
    assert "opensearch.version=9.9.1\n" in descriptor
    mustache = home / "modules" / "lang-mustache"
    assert sorted(p.name for p in mustache.iterdir()) == [
        "compiler-0.9.14.jar", "lang-mustache-client-9.9.1.jar", "plugin-descriptor.properties",
        "plugin-security.policy",
    ]
    shutil.rmtree(fake_central / "org")  # a second call must not touch the network
    assert fetch_distribution("opensearch", "9.9.1") == home


def test_fetch_rejects_a_download_with_the_wrong_checksum(fake_central: Path) -> None:
    from rerank_proxy_tools.localcluster import cache_dir, fetch_distribution

    _publish_zip(fake_central, "9.9.2", sha1="0" * 40)
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        fetch_distribution("opensearch", "9.9.2")
    assert not (cache_dir() / "opensearch-9.9.2").exists()
    assert list((cache_dir() / "downloads").iterdir()) == []
