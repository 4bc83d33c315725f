"""The `remote` backend against a real reranking server (Infinity serving a tiny cross-encoder on CPU).

Infinity runs once for this module, with an API key, so every call here also exercises bearer auth. Faults a real
server will not produce on demand (503, 429, a hung answer) come from a small scripted server instead.
"""
from __future__ import annotations

import json
import os
import re
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: nothing may try the network

import pytest
from pydantic import ValidationError

from rerank.backend import ModelLoadError
from rerank.registry import load_scorer
from rerank.remote import RemoteScorer, backoff_s, parse_scores, request_body, service_message
from rerank.spec import CrossEncoderSpec, RemoteSpec
from rerank_proxy_tools.models import make_tiny_cross_encoder
from tests.infinity import InfinityServer, free_port

pytestmark = pytest.mark.integration  # a real reranking server (Infinity) in its own venv

SERVED_NAME = "tiny-reranker"
KEY_ENV = "RERANK_TEST_REMOTE_KEY"
API_KEY = "test-key-not-a-secret"
QUERY = "vitamin C deficiency causes scurvy"
DOCS = [
    "Scurvy results from a prolonged lack of ascorbic acid in the diet.",
    "Cigarette smoke contains carcinogens that damage the DNA of airway epithelial cells.",
    "Regular aerobic exercise lowers resting blood pressure in adults with hypertension.",
    "Sailors on long voyages developed bleeding gums until citrus fruit was added to rations.",
    "Metformin reduces hepatic glucose production in patients with type 2 diabetes.",
    "Collagen synthesis requires ascorbate as a cofactor for prolyl hydroxylase.",
    "Sleep deprivation impairs working memory and attention in healthy volunteers.",
    "Measles vaccination coverage above 95 percent interrupts community transmission.",
]
MANY_DOCS = [f"{doc} (variant {i})" for i in range(4) for doc in DOCS][:25]


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cross_encoder(tmp_path_factory.mktemp("remote") / "tiny-ce")


@pytest.fixture(scope="module")
def infinity(model_dir: Path) -> Iterator[InfinityServer]:
    server = InfinityServer(model_dir, served_model_name=SERVED_NAME, api_key=API_KEY)
    server.start()
    print(f"\n[infinity] venv {server.install_s:.1f}s, server start {server.start_s:.1f}s", file=sys.stderr)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, API_KEY)


@pytest.fixture
def make_scorer() -> Iterator[Callable[..., RemoteScorer]]:
    """Scorers for a base URL and spec overrides, closed after the test."""
    made: list[RemoteScorer] = []

    def make(url: str, **fields: Any) -> RemoteScorer:
        fields = {"remote_model": SERVED_NAME, "api_key_env": KEY_ENV, "retry_backoff_s": 0.01, **fields}
        scorer = load_scorer("remote-test", RemoteSpec(source=url, **fields))
        assert isinstance(scorer, RemoteScorer)
        made.append(scorer)
        return scorer

    yield make
    for scorer in made:
        scorer.close()


def infinity_rerank(server: InfinityServer, query: str, docs: list[str]) -> list[dict[str, Any]]:
    """Infinity's own answer, asked without the backend: its results as it sorts them."""
    body = {"model": SERVED_NAME, "query": query, "documents": docs, "top_n": len(docs), "return_documents": False}
    request = urllib.request.Request(
        f"{server.url}/v1/rerank", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["results"]


def rerank_calls(server: InfinityServer, status: str) -> float:
    """Rerank requests Infinity has answered with `status` (2xx, 4xx…), from its own Prometheus metrics."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for labels, value in re.findall(r"^http_requests_total\{([^}]*)\} (\S+)$", text, re.M):
        if 'handler="/v1/rerank"' in labels and f'status="{status}"' in labels:
            total += float(value)
    return total


# ------------------------------------------------------------------------------------- against the real server


def test_scores_equal_infinitys_own_answer(infinity: InfinityServer, make_scorer) -> None:
    scores = make_scorer(infinity.url).score(QUERY, DOCS)
    expected = {item["index"]: item["relevance_score"] for item in infinity_rerank(infinity, QUERY, DOCS)}
    assert scores == [expected[i] for i in range(len(DOCS))]


def test_results_come_back_in_input_order_although_the_service_sorts_them(
    infinity: InfinityServer, make_scorer
) -> None:
    served_order = [item["index"] for item in infinity_rerank(infinity, QUERY, DOCS)]
    assert served_order != list(range(len(DOCS))), "precondition: the service reorders these documents"
    scorer = make_scorer(infinity.url)
    batch = scorer.score(QUERY, DOCS)
    one_by_one = [scorer.score(QUERY, [doc])[0] for doc in DOCS]
    assert batch == pytest.approx(one_by_one, abs=1e-6)


def test_scores_match_the_local_cross_encoder_on_the_same_folder(
    infinity: InfinityServer, model_dir: Path, make_scorer
) -> None:
    from rerank.cross_encoder import CrossEncoderScorer

    local = CrossEncoderScorer(CrossEncoderSpec(source=str(model_dir)), name="local")
    remote = make_scorer(infinity.url).score(QUERY, DOCS)
    # Infinity (transformers 4, float32 JSON) and the local backend (transformers 5, float64 sigmoid): same model.
    assert remote == pytest.approx(local.score(QUERY, DOCS), abs=1e-5)


def test_max_texts_per_call_splits_into_calls_with_the_same_scores(infinity: InfinityServer, make_scorer) -> None:
    whole = make_scorer(infinity.url, max_texts_per_call=100).score(QUERY, MANY_DOCS)
    before = rerank_calls(infinity, "2xx")
    split = make_scorer(infinity.url, max_texts_per_call=10).score(QUERY, MANY_DOCS)
    assert rerank_calls(infinity, "2xx") - before == 3  # 10 + 10 + 5
    assert split == pytest.approx(whole, abs=1e-6)


def test_pairs_of_several_queries_score_as_each_query_alone_in_one_call_per_query(
    infinity: InfinityServer, make_scorer
) -> None:
    scorer = make_scorer(infinity.url, max_texts_per_call=2)
    other = "a different question"
    queries = [QUERY, other, QUERY, other, QUERY]
    docs = [DOCS[0], DOCS[1], DOCS[2], DOCS[0], DOCS[1]]
    before = rerank_calls(infinity, "2xx")
    together = scorer.score_pairs(queries, docs)
    assert rerank_calls(infinity, "2xx") - before == 3  # QUERY: 2 + 1 documents, other: 2
    alone = scorer.score(QUERY, [docs[0], docs[2], docs[4]]), scorer.score(other, [docs[1], docs[3]])
    assert together == pytest.approx([alone[0][0], alone[1][0], alone[0][1], alone[1][1], alone[0][2]], abs=1e-6)


def test_wrong_token_is_a_clear_error_and_not_retried(
    infinity: InfinityServer, make_scorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "wrong-key")
    scorer = make_scorer(infinity.url, retries=3)
    before = rerank_calls(infinity, "4xx")
    with pytest.raises(RuntimeError, match=r"HTTP 401: Unauthorized"):
        scorer.score(QUERY, DOCS)
    assert rerank_calls(infinity, "4xx") - before == 1


def test_a_request_the_service_refuses_reports_its_message_without_retry(
    infinity: InfinityServer, make_scorer
) -> None:
    too_long = "word " * 30_000  # Infinity validates documents to at most 122,880 characters
    scorer = make_scorer(infinity.url, retries=3)
    before = rerank_calls(infinity, "4xx")
    with pytest.raises(RuntimeError, match=r"HTTP 422: .*at most 122880 characters"):
        scorer.score(QUERY, [DOCS[0], too_long])
    assert rerank_calls(infinity, "4xx") - before == 1


def test_missing_token_variable_fails_at_load_naming_it(
    infinity: InfinityServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    spec = RemoteSpec(source=infinity.url, api_key_env=KEY_ENV)
    with pytest.raises(ModelLoadError, match=KEY_ENV):
        load_scorer("remote-test", spec)


def test_server_that_is_down_fails_clearly_after_the_configured_retries(
    make_scorer, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    scorer = make_scorer(url, retries=2)
    with caplog.at_level("WARNING", logger="rerank.remote"), pytest.raises(RuntimeError) as failure:
        scorer.score(QUERY, DOCS)
    assert f"{url}/v1/rerank failed after 3 attempt(s)" in str(failure.value)
    assert "Cannot connect" in str(failure.value)
    retries = [re.search(r"retry (\d) of 2", r.getMessage()) for r in caplog.records]
    assert [m.group(1) for m in retries if m] == ["1", "2"]


def test_no_documents_means_no_call(make_scorer) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # would fail if it were called
    assert make_scorer(url).score(QUERY, []) == []


# ----------------------------------------------------------------------- fault injection: a scripted server


class Scripted:
    """A loopback HTTP server answering from a script: "ok" (a valid Cohere-style answer, sorted by score like a
    real service), "hang" (no answer until the test ends), or (status, body, headers)."""

    def __init__(self, script: list[Any], default: Any = "ok") -> None:
        self.script = list(script)
        self.default = default
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = threading.Event()
        self.barrier: threading.Barrier | None = None
        self.work_s = 0.0  # how long each answer takes: a slow service, so that unbounded calls would pile up
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner._lock:
                    owner.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                    action = owner.script.pop(0) if owner.script else owner.default
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                try:
                    if owner.barrier is not None:
                        owner.barrier.wait()  # proceeds only once enough calls are in flight together
                    if action == "hang":
                        owner.release.wait()
                        return
                    owner.release.wait(owner.work_s)
                finally:
                    # Before answering: the client may send its next call as soon as it has this answer.
                    with owner._lock:
                        owner.in_flight -= 1
                if action == "ok":
                    results = [{"index": i, "relevance_score": fake_score(d)} for i, d in enumerate(body["documents"])]
                    results.sort(key=lambda r: -r["relevance_score"])
                    action = (200, {"results": results}, {})
                status, payload, headers = action
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        if self.barrier is not None:
            self.barrier.abort()
        self.server.shutdown()
        self.server.server_close()


def fake_score(doc: str) -> float:
    return len(doc) / 100


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    servers: list[Scripted] = []

    def make(script: list[Any], default: Any = "ok") -> Scripted:
        servers.append(Scripted(script, default))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_503_and_429_are_retried_then_succeed(scripted, make_scorer) -> None:
    server = scripted([(503, {"message": "warming up"}, {}), (429, {"message": "slow down"}, {"Retry-After": "0"})])
    scores = make_scorer(server.url, retries=2).score(QUERY, DOCS)
    assert scores == [fake_score(doc) for doc in DOCS]
    assert len(server.requests) == 3
    assert all(r["headers"]["Authorization"] == f"Bearer {API_KEY}" for r in server.requests)


def test_persistent_5xx_fails_with_status_and_service_message(scripted, make_scorer) -> None:
    server = scripted([], default=(500, {"error": "CUDA out of memory"}, {}))
    with pytest.raises(RuntimeError, match=r"failed after 2 attempt\(s\): HTTP 500: CUDA out of memory"):
        make_scorer(server.url, retries=1).score(QUERY, DOCS)
    assert len(server.requests) == 2


def test_4xx_is_not_retried(scripted, make_scorer) -> None:
    server = scripted([], default=(422, {"detail": "texts: too many"}, {}))
    with pytest.raises(RuntimeError, match=r"HTTP 422: texts: too many"):
        make_scorer(server.url, retries=3).score(QUERY, DOCS)
    assert len(server.requests) == 1


def test_a_slow_answer_times_out_without_retry(scripted, make_scorer) -> None:
    server = scripted([], default="hang")
    with pytest.raises(RuntimeError, match=r"did not answer within 0.5s \(not retried\)"):
        make_scorer(server.url, retries=3, timeout_s=0.5).score(QUERY, DOCS)
    assert len(server.requests) == 1


def test_max_concurrency_bounds_calls_in_flight_across_searches(scripted, make_scorer) -> None:
    server = scripted([])
    server.barrier = threading.Barrier(2, timeout=10)  # every call waits for a second one: proves 2 run together
    server.work_s = 0.05
    scorer = make_scorer(server.url, max_texts_per_call=2, max_concurrency=2)
    docs = DOCS[:6]  # 3 calls per search
    results: list[list[float]] = []
    searches = [threading.Thread(target=lambda: results.append(scorer.score(QUERY, docs))) for _ in range(2)]
    for thread in searches:
        thread.start()
    for thread in searches:
        thread.join(timeout=30)
    assert results == [[fake_score(doc) for doc in docs]] * 2
    assert len(server.requests) == 6
    assert server.max_in_flight == 2


def test_a_malformed_answer_is_a_clear_error(scripted, make_scorer) -> None:
    server = scripted([(200, {"results": [{"index": 0, "relevance_score": 1.0}]}, {})])
    with pytest.raises(RuntimeError, match=r"unusable answer: 1 of 2 documents have no score"):
        make_scorer(server.url).score(QUERY, DOCS[:2])


def test_cohere_request_names_the_model_and_asks_for_every_document(scripted, make_scorer) -> None:
    server = scripted([])
    make_scorer(server.url + "/", remote_model="rerank-v3").score(QUERY, DOCS[:3])
    (request,) = server.requests
    assert request["path"] == "/v1/rerank"
    assert request["body"] == {"model": "rerank-v3", "query": QUERY, "documents": DOCS[:3], "top_n": 3,
                               "return_documents": False}


# ------------------------------------------------------------------------------- wire formats and config, pure


def test_tei_request_and_answer_map_by_index() -> None:
    assert request_body("tei", "ignored", "q", ["a", "b"]) == {
        "query": "q", "texts": ["a", "b"], "raw_scores": False, "truncate": True
    }
    answer = [{"index": 1, "score": 0.9}, {"index": 0, "score": 0.1}]
    assert parse_scores("tei", answer, 2) == [0.1, 0.9]


@pytest.mark.parametrize(
    "results, error",
    [
        ([{"index": 0, "relevance_score": 1}, {"index": 0, "relevance_score": 2}], "appears twice"),
        ([{"index": 2, "relevance_score": 1}, {"index": 0, "relevance_score": 2}], "index 2 is not one of"),
        ([{"index": 0, "relevance_score": "high"}, {"index": 1, "relevance_score": 2}], "is not a number"),
        ([{"index": 0}, {"index": 1, "relevance_score": 2}], "has no 'relevance_score'"),
    ],
)
def test_parse_scores_rejects_answers_that_do_not_cover_each_document_once(results: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_scores("cohere", {"results": results}, 2)


def test_service_message_reads_the_usual_error_shapes() -> None:
    assert service_message(b'{"message": "bad key"}') == "bad key"  # Cohere
    assert service_message(b'{"error": "Input validation error", "error_type": "Validation"}') == (
        "Input validation error"  # TEI
    )
    assert service_message(b'{"error": {"message": "Invalid model", "code": 400}}') == "Invalid model"  # OpenAI
    assert service_message(b"<html>Bad Gateway</html>") == "<html>Bad Gateway</html>"


def test_backoff_doubles_with_jitter_and_honours_retry_after() -> None:
    for retry, (low, high) in enumerate([(0.05, 0.1), (0.1, 0.2), (0.2, 0.4)], start=1):
        assert low <= backoff_s(0.1, retry) <= high
    assert backoff_s(0.1, 1, retry_after="2") == 2.0
    assert backoff_s(0.1, 1, retry_after="Wed, 21 Oct 2015 07:28:00 GMT") <= 0.1
    assert backoff_s(0.1, 1, retry_after="120") is None  # longer than a search can wait: give up now


def test_a_retry_after_longer_than_a_search_can_wait_fails_at_once(scripted, make_scorer) -> None:
    server = scripted([(429, {"message": "quota exhausted"}, {"Retry-After": "3600"})])
    with pytest.raises(RuntimeError, match=r"HTTP 429: quota exhausted, and asks to retry after 3600s"):
        make_scorer(server.url, retries=3).score(QUERY, DOCS)
    assert len(server.requests) == 1


def test_remote_fields_are_rejected_on_local_backends() -> None:
    with pytest.raises(ValidationError, match=r"max_texts_per_call, retries: only valid with backend 'remote'"):
        CrossEncoderSpec(source="BAAI/bge-reranker-base", retries=3, max_texts_per_call=8)


@pytest.mark.parametrize("source", ["rerank-gpu:7997", "ftp://host/", "http://", "http://host/?q=1"])
def test_remote_source_must_be_a_base_url(source: str) -> None:
    with pytest.raises(ValidationError, match="base URL"):
        RemoteSpec(source=source)


def test_count_tokens_is_a_word_count() -> None:
    scorer = RemoteScorer(RemoteSpec(source="http://127.0.0.1:9"))
    try:
        assert scorer.count_tokens(["  vitamin C\tdeficiency\n", ""]) == [3, 0]
    finally:
        scorer.close()
