"""`rerank-proxy eval` end to end: a real Elasticsearch, the in-process proxy with the MiniLM model, Medline."""
from __future__ import annotations

import importlib.util
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import urllib3

from proxy.cli import main

# Offline runs of the pipeline (MiniLM, window 100; title + text, linear fusion 0.5 at the time) took Medline NDCG@10 from 0.667 to 0.755;
# a reranker that lost its edge, or a proxy that stopped reranking, lands well under this.
MIN_GAIN = 0.03
MEASURES = {"ndcg@10", "mrr@10", "recall@100"}
_HTTP = urllib3.PoolManager(retries=False)


def index_status(cluster: str, index: str) -> int:
    return _HTTP.request("HEAD", f"{cluster}/{index}").status


def delete_index(cluster: str, index: str) -> None:
    _HTTP.request("DELETE", f"{cluster}/{index}")


def doc_count(cluster: str, index: str) -> int:
    _HTTP.request("POST", f"{cluster}/{index}/_refresh")
    return json.loads(_HTTP.request("GET", f"{cluster}/{index}/_count").data)["count"]


def evaluate(*args: str) -> int:
    return main(["--log-level", "WARNING", "eval", *args])


def test_eval_reranks_medline_above_bm25_and_writes_the_results(es_url, shared_data_dir, tmp_path, capsys):
    index = "eval-test-medline"
    delete_index(es_url, index)  # a leftover of an interrupted session would be reused, and then kept
    results, plot = tmp_path / "results.json", tmp_path / "medline.png"
    plotting = ["--plot", str(plot)] if importlib.util.find_spec("matplotlib") else []

    code = evaluate("--data", str(shared_data_dir / "medline"), "--upstream", es_url, "--index", index,
                    "--window", "100", "--json", str(results), *plotting)

    out = capsys.readouterr().out
    assert code == 0, out
    scores = json.loads(results.read_text())
    assert list(scores) == ["medline"] and sorted(scores["medline"]) == ["bm25", "reranked"]
    for run in scores["medline"].values():
        assert set(run) == MEASURES and all(0.0 <= value <= 1.0 for value in run.values())
    bm25, reranked = scores["medline"]["bm25"]["ndcg@10"], scores["medline"]["reranked"]["ndcg@10"]
    assert reranked >= bm25 + MIN_GAIN, out
    rows = {line[2:].split()[0]: line for line in out.splitlines() if line[:2] in ("  ", "! ")}
    assert rows["reranked"].endswith("reranked 30") and rows["bm25"].endswith("skipped 30"), out
    if plotting:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert index_status(es_url, index) == 404  # created by the eval, so removed by it


def test_eval_keeps_its_index_on_request_and_reuses_it_untouched(es_url, shared_data_dir, capsys):
    index = "eval-test-reuse"
    delete_index(es_url, index)
    args = ["--data", str(shared_data_dir / "medline"), "--upstream", es_url, "--index", index,
            "--max-queries", "2", "--window", "5"]
    try:
        assert evaluate(*args, "--keep") == 0
        assert doc_count(es_url, index) == 1033
        capsys.readouterr()

        assert evaluate(*args) == 0
        assert "reusing index eval-test-reuse" in capsys.readouterr().err
        assert index_status(es_url, index) == 200  # never delete an index the eval did not create
    finally:
        delete_index(es_url, index)


def test_eval_refuses_an_index_holding_something_else(es_url, shared_data_dir, capsys):
    index = "eval-test-other"
    delete_index(es_url, index)
    _HTTP.request("PUT", f"{es_url}/{index}/_doc/1?refresh=true", body=b'{"text": "x"}',
                  headers={"Content-Type": "application/json"})
    try:
        code = evaluate("--data", str(shared_data_dir / "medline"), "--upstream", es_url, "--index", index)
        assert code == 2
        assert "already exists" in capsys.readouterr().err
        assert doc_count(es_url, index) == 1
    finally:
        delete_index(es_url, index)


def test_eval_names_an_analyzer_the_cluster_lacks(es_url, shared_data_dir, capsys):
    index = "eval-test-analyzer"
    code = evaluate("--data", str(shared_data_dir / "medline"), "--upstream", es_url, "--index", index,
                    "--analyzer", "no-such-analyzer")
    assert code == 2
    assert "--analyzer no-such-analyzer: the cluster" in capsys.readouterr().err
    assert index_status(es_url, index) == 404


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in cluster that notes every request it gets and fails it."""

    seen: list[str] = []

    def _fail(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _fail

    def log_message(self, *args: object) -> None:
        pass


def test_bad_folder_stops_before_touching_the_cluster(shared_data_dir, tmp_path, capsys):
    folder = tmp_path / "medline"
    shutil.copytree(shared_data_dir / "medline", folder)
    qrels = folder / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "1\t13x\t1\n")
    _Recorder.seen = []
    with ThreadingHTTPServer(("127.0.0.1", 0), _Recorder) as cluster:
        threading.Thread(target=cluster.serve_forever, daemon=True).start()
        try:
            code = evaluate("--data", str(folder), "--upstream", f"http://127.0.0.1:{cluster.server_address[1]}")
        finally:
            cluster.shutdown()

    assert code == 2
    lines = len(qrels.read_text().splitlines())
    assert f"{qrels}:{lines}: corpus-id '13x' is not in corpus.jsonl" in capsys.readouterr().err
    assert _Recorder.seen == []


def test_missing_collection_file_is_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert evaluate("--data", str(tmp_path / "empty"), "--upstream", "http://127.0.0.1:9") == 2
    assert f"{Path(tmp_path / 'empty' / 'corpus.jsonl')}: missing file" in capsys.readouterr().err


class _RefusingProxy(BaseHTTPRequestHandler):
    """Answers every search as a cluster answers a bad request."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"error":{"reason":"no such thing"},"status":400}'
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_failing_search_stops_the_eval_with_the_reason_and_removes_its_index(es_url, shared_data_dir, capsys):
    index = "eval-test-refused"
    delete_index(es_url, index)
    with ThreadingHTTPServer(("127.0.0.1", 0), _RefusingProxy) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        try:
            code = evaluate("--data", str(shared_data_dir / "medline"), "--upstream", es_url, "--index", index,
                            "--proxy", f"http://127.0.0.1:{proxy.server_address[1]}", "--max-queries", "3")
        finally:
            proxy.shutdown()
    assert code == 1
    assert "the proxy answered 400: no such thing" in capsys.readouterr().err
    assert index_status(es_url, index) == 404


def test_structured_corpus_is_indexed_as_fields_searched_and_reranked(es_url, shared_data_dir, capsys):
    """Gorilla's API records: the JSON in `text` becomes `_source` fields, BM25 searches the mapping's text fields,
    and the proxy reranks on the flattened record."""
    index = "eval-test-structured"
    delete_index(es_url, index)
    try:
        code = evaluate("--data", str(shared_data_dir / "gorilla-hf"), "--upstream", es_url, "--index", index,
                        "--structured", "--max-queries", "3", "--window", "5", "--keep")
        out = capsys.readouterr().out
        assert code == 0, out
        record = json.loads(_HTTP.request("GET", f"{es_url}/{index}/_doc/0").data)["_source"]
        assert record["title"] == "YituTech/conv-bert-base" and record["framework"] == "Hugging Face Transformers"
        assert record["performance"] == {"dataset": "N/A", "accuracy": "N/A"}
        rows = {line[2:].split()[0]: line for line in out.splitlines() if line[:2] in ("  ", "! ")}
        assert rows["reranked"].endswith("reranked 3") and rows["bm25"].endswith("skipped 3"), out
    finally:
        delete_index(es_url, index)
