"""`rerank-proxy serve` and `demo` as processes: config errors, SIGHUP reload, bounded memory on a huge streamed
`_bulk`, the demo's side-by-side comparison."""
from __future__ import annotations

import signal
import subprocess
import threading

import orjson
import pytest
import yaml

from tests.integration.conftest import proxy_config, raw
from tests.serveprocess import CLI, REPO, Serve

pytestmark = pytest.mark.integration


def test_bad_config_refuses_to_start_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"models": {"m": {"backend": "bi-encoder", "source": "x"}},
                                    "indices": [{"match": "a", "windw": 3}]}))
    result = subprocess.run([*CLI, "serve", "--config", str(path)], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "indices.0.windw" in result.stderr and "not starting" in result.stderr


def test_shipped_config_serves_and_sighup_reloads_it(scifact_es, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text((REPO / "config.yaml").read_text())
    body = orjson.dumps({"query": {"match": {"title": "vitamin D bone"}}})
    with Serve(path, scifact_es) as serve:
        # The shipped deadline is a production one: on a loaded 2-core machine the model may finish only the top
        # of the window in time, which is still the model serving.
        status = raw("POST", f"{serve.url}/scifact/_search", body).headers["X-Rerank-Status"]
        assert status == "reranked" or status.startswith("partial; reranked="), status
        path.write_text(path.read_text().replace("  enabled: true\n", "  enabled: false\n", 1))
        serve.process.send_signal(signal.SIGHUP)
        serve.wait_for_log("config reloaded")
        assert raw("POST", f"{serve.url}/scifact/_search", body).headers["X-Rerank-Status"] == "skipped; reason=disabled"


def test_a_200_mb_bulk_streams_through_with_bounded_memory(tmp_path):
    """The cluster would refuse 200 MB (http.max_content_length is 100 MB), so a sink that reads and counts stands
    in for it: what is measured is the proxy, which must stream rather than buffer."""
    sink = _CountingSink()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(proxy_config(sink.url)))
    line = b'{"index":{}}\n' + orjson.dumps({"text": "x" * 1000}) + b"\n"
    chunk = line * 1000
    total = 200 * 1024 * 1024
    chunks = total // len(chunk)
    with sink, Serve(path, sink.url) as serve:
        before = serve.peak_rss_kb()

        def body():
            for _ in range(chunks):
                yield chunk

        import urllib3

        response = urllib3.PoolManager().request(
            "POST", f"{serve.url}/_bulk", body=body(), headers={"Content-Type": "application/x-ndjson"},
            chunked=True, preload_content=True,
        )
        assert response.status == 200
        assert sink.received == chunks * len(chunk)
        growth_mb = (serve.peak_rss_kb() - before) / 1024
        assert growth_mb < 40, f"proxy peak RSS grew by {growth_mb:.0f} MB"


class _CountingSink:
    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                if self.headers.get("Transfer-Encoding") == "chunked":
                    while (size := int(self.rfile.readline().strip(), 16)) > 0:
                        sink.received += len(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    remaining = int(self.headers.get("Content-Length", 0))
                    while remaining:
                        got = len(self.rfile.read(min(remaining, 1 << 20)))
                        sink.received += got
                        remaining -= got
                payload = b'{"took":1,"errors":false,"items":[]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.received = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> _CountingSink:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


def test_demo_shows_both_orders_scores_them_and_exits_with_no_serve():
    """The README's first command, as a process: its own cluster, the sample, a reranked query side by side, NDCG."""
    result = subprocess.run([*CLI, "demo", "--no-serve", "--queries", "1", "--evaluate", "5", "--port", "0"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[reranked]" in out and "cluster (BM25)" in out, out
    lines = out.splitlines()
    header = lines.index("NDCG@10 over 5 judged SciFact queries:")
    scores = [line.split() for line in lines[header + 1 : header + 3]]
    assert [row[0] for row in scores] == ["cluster", "reranked"] and all(0 < float(row[1]) <= 1 for row in scores), out
    assert "Ctrl-C" not in out, out
