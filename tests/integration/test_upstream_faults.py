"""Isolation: an upstream fault stays with the request it hit, is reported the way the cluster reports errors, and the
pool heals by itself.

Faults a real cluster can show (reset, close, truncation, a frozen or slow cluster) come from Toxiproxy between the
proxy and the real Elasticsearch; those it cannot show on demand (a socket left unclean after a complete answer,
a cluster that never answers, a malformed answer) come from the fake upstream in tests/faultserver.py. Each fault
is tried on a search with reranking off and on, and on a pass-through request.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import urllib3

from proxy.config import parse_config
from tests.faultserver import POISON_BODY, Action, FaultServer
from tests.integration.conftest import Raw, proxy_config, without_took
from tests.proxyrunner import MINILM, RunningProxy
from tests.toxiproxy import Proxy, Toxiproxy, running_toxiproxy

UPSTREAM_ERROR = "rerank_proxy_upstream_exception"
UNAVAILABLE_ERROR = "rerank_proxy_upstream_unavailable_exception"
TIMEOUT_ERROR = "rerank_proxy_upstream_timeout_exception"

TIMEOUT_S = 1.0  # every upstream timeout of the proxies that test them
SLACK_S = 3.0  # on top of a timeout: a shared 2-core machine, yet well under how long each fault would last
CLIENT_TIMEOUT_S = 20.0  # a client's own patience: past it, the proxy hung
POOL_SIZE = 4
HANG_UPS = 6  # more than POOL_SIZE: slots that are not freed would stop the 5th

FAULTS_INDEX = "upstream-faults"
DOC_TEXT = "steady words fill a mid-sized document " * 800  # ~32 KB: a body spanning many reads
BIG_DOC_BYTES = 4 << 20  # past any sensible buffering: the proxy must stream it, so its head goes out first


@dataclass(frozen=True)
class Call:
    """A request a client sends: a search with reranking off or on, or a pass-through."""

    name: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _search(name: str, title: str, rerank: str) -> Call:
    body = orjson.dumps({"query": {"match": {"title": title}}, "size": 10})
    return Call(name, "POST", "/scifact/_search", body, {"X-Rerank": rerank})


SEARCH_OFF = _search("search-off", "vitamin D bone", "off")
SEARCH_ON = _search("search-on", "vitamin D bone", "on")
DOC = Call("doc", "GET", f"/{FAULTS_INDEX}/_doc/1")
CALLS = [SEARCH_OFF, SEARCH_ON, DOC]
# A second request of each kind, with an answer of its own: whoever gets the first one's answer got a stale one.
OTHER = {
    SEARCH_OFF.name: _search("search-off-other", "smoking lung cancer risk", "off"),
    SEARCH_ON.name: _search("search-on-other", "smoking lung cancer risk", "on"),
    DOC.name: Call("doc-other", "GET", f"/{FAULTS_INDEX}/_doc/2"),
}
BIG_DOC = Call("big-doc", "GET", f"/{FAULTS_INDEX}/_doc/big")
ALL_CALLS = [*CALLS, *OTHER.values(), BIG_DOC]

each_call = pytest.mark.parametrize("call", CALLS, ids=lambda call: call.name)


# ---- clients ----------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    elapsed_s: float
    response: Raw | None = None  # a complete response, when there was one
    failure: str = ""  # else what happened instead
    timed_out: bool = False  # the client gave up waiting


def send(base_url: str, call: Call, timeout_s: float = CLIENT_TIMEOUT_S,
         extra_headers: dict[str, str] | None = None) -> Outcome:
    """`call` on a connection of its own; a body shorter than announced is a failure, never a response."""
    headers = {**call.headers, **(extra_headers or {})}
    if call.body is not None:
        headers["Content-Type"] = "application/json"
    started = time.monotonic()
    with urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=timeout_s)) as pool:
        try:
            response = pool.request(call.method, base_url + call.path, body=call.body, headers=headers,
                                    decode_content=False, preload_content=True)
        except urllib3.exceptions.ReadTimeoutError:
            return Outcome(time.monotonic() - started, failure=f"no answer within {timeout_s} s", timed_out=True)
        except urllib3.exceptions.ProtocolError as err:  # reset, closed early, or a body cut short
            return Outcome(time.monotonic() - started, failure=f"connection broke: {err!r}")
    return Outcome(time.monotonic() - started, Raw(response.status, response.headers, response.data))


def request_bytes(call: Call) -> bytes:
    """`call` as bytes on the wire, for clients that send and hang up."""
    headers = {"Host": "upstream-faults", **call.headers}
    if call.body is not None:
        headers |= {"Content-Type": "application/json", "Content-Length": str(len(call.body))}
    head = f"{call.method} {call.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "\r\n").encode() + (call.body or b"")


def assert_es_error(outcome: Outcome, status: int, error_type: str) -> None:
    """The error as Elasticsearch shapes its own: JSON, the type in `error` and its root cause, the status echoed."""
    assert outcome.response is not None, f"expected an ES-style {status} {error_type}, got {outcome.failure}"
    response = outcome.response
    assert response.status == status, f"expected {status} {error_type}, got {response.status}: {response.body[:300]!r}"
    assert response.headers.get("Content-Type", "").startswith("application/json")
    error = orjson.loads(response.body)
    assert error["status"] == status
    assert error["error"]["type"] == error_type and error["error"]["root_cause"][0]["type"] == error_type
    assert error["error"]["reason"] and error["error"]["root_cause"][0]["reason"] == error["error"]["reason"]


# ---- Toxiproxy in front of the real Elasticsearch ----------------------------------------------------------------


@dataclass
class Front:
    """A proxy in front of the toxiproxy link, and each call's fault-free answer (`took` aside)."""

    url: str
    expected: dict[str, bytes]


def assert_answers_as_before(front: Front, call: Call) -> None:
    outcome = send(front.url, call)
    assert outcome.response is not None, f"{call.name} after the fault was removed: {outcome.failure}"
    assert outcome.response.status == 200, outcome.response.body[:300]
    assert without_took(outcome.response.body) == front.expected[call.name], f"{call.name}: not its own answer"


@pytest.fixture(scope="session")
def toxiproxy_server() -> Iterator[Toxiproxy]:
    with running_toxiproxy() as server:
        yield server


@pytest.fixture(scope="session")
def es_toxiproxy(toxiproxy_server: Toxiproxy, es_url: str) -> Iterator[Proxy]:
    """A toxiproxy link to the real Elasticsearch; `.url` is its base URL."""
    link = toxiproxy_server.create("elasticsearch", urlsplit(es_url).netloc)
    yield link
    link.delete()


@pytest.fixture
def toxics(es_toxiproxy: Proxy) -> Iterator[Proxy]:
    """The link, clean at the start and the end of the test whatever happened in it."""
    es_toxiproxy.clear()
    yield es_toxiproxy
    es_toxiproxy.clear()


@pytest.fixture(scope="session")
def fault_docs(es_url: str) -> str:
    http = urllib3.PoolManager(retries=False, timeout=120)
    settings = {"settings": {"number_of_shards": 1, "number_of_replicas": 0}}
    http.request("PUT", f"{es_url}/{FAULTS_INDEX}", body=orjson.dumps(settings),
                  headers={"Content-Type": "application/json"})  # a 400 when it exists already is fine
    docs = {"1": DOC_TEXT, "2": "a short second document", "big": "x" * BIG_DOC_BYTES}
    for doc_id, text in docs.items():
        response = http.request("PUT", f"{es_url}/{FAULTS_INDEX}/_doc/{doc_id}?refresh=true",
                                body=orjson.dumps({"text": text}), headers={"Content-Type": "application/json"})
        assert response.status in (200, 201), response.data[:300]
    return es_url


def _front(running: RunningProxy, direct: str) -> Front:
    """Each call's answer with no fault: the cluster's own, except a reranked search, which is the proxy's."""
    expected = {}
    for call in ALL_CALLS:
        outcome = send(running.url if call.headers.get("X-Rerank") == "on" else direct, call)
        assert outcome.response is not None and outcome.response.status == 200, f"{call.name}: {outcome.failure}"
        expected[call.name] = without_took(outcome.response.body)
    return Front(running.url, expected)


@pytest.fixture(scope="module")
def relay(scifact_es: str, fault_docs: str, es_toxiproxy: Proxy) -> Iterator[Front]:
    """The proxy with its default upstream settings, through the toxiproxy link."""
    es_toxiproxy.clear()
    with RunningProxy(proxy_config(es_toxiproxy.url)) as running:
        yield _front(running, scifact_es)


@pytest.fixture(scope="module")
def timed_relay(scifact_es: str, fault_docs: str, es_toxiproxy: Proxy) -> Iterator[Front]:
    """The proxy with short upstream timeouts, through the toxiproxy link."""
    es_toxiproxy.clear()
    config = proxy_config(es_toxiproxy.url)
    config["upstream"] = {"connect_timeout_s": TIMEOUT_S, "response_timeout_s": TIMEOUT_S, "idle_timeout_s": TIMEOUT_S}
    with RunningProxy(config) as running:
        yield _front(running, scifact_es)


def test_toxiproxy_and_its_toxics_behave_as_these_tests_assume(toxics: Proxy, fault_docs: str) -> None:
    """The harness itself, with no rerank-proxy in between."""
    clean, direct = send(toxics.url, DOC), send(fault_docs, DOC)
    assert clean.response is not None and direct.response is not None
    assert (clean.response.status, clean.response.body) == (200, direct.response.body)
    cut = toxics.add_toxic("limit_data", bytes=2000)
    assert send(toxics.url, DOC).failure.startswith("connection broke")
    toxics.remove_toxic(cut)
    frozen = toxics.add_toxic("timeout", timeout=0)
    assert send(toxics.url, DOC, timeout_s=TIMEOUT_S).timed_out
    toxics.remove_toxic(frozen)
    toxics.add_toxic("reset_peer", stream="upstream", timeout=0)
    assert send(toxics.url, DOC).failure.startswith("connection broke")


def test_with_no_fault_every_call_through_toxiproxy_answers_as_the_cluster_does(relay: Front, toxics: Proxy) -> None:
    for call in ALL_CALLS:
        assert_answers_as_before(relay, call)


@each_call
def test_an_upstream_reset_before_any_answer_byte_is_an_es_style_502(relay: Front, toxics: Proxy, call: Call) -> None:
    toxics.add_toxic("reset_peer", stream="upstream", timeout=0)
    assert_es_error(send(relay.url, call), 502, UPSTREAM_ERROR)
    toxics.clear()
    assert_answers_as_before(relay, call)


@each_call
def test_an_upstream_close_before_any_answer_byte_is_an_es_style_502(relay: Front, toxics: Proxy, call: Call) -> None:
    toxics.add_toxic("limit_data", bytes=0)  # the cluster answers; the link closes instead of passing a byte on
    assert_es_error(send(relay.url, call), 502, UPSTREAM_ERROR)
    toxics.clear()
    assert_answers_as_before(relay, call)


@each_call
def test_a_cluster_refusing_connections_is_a_502_unavailable_and_the_pool_recovers(
    relay: Front, toxics: Proxy, call: Call
) -> None:
    toxics.set_enabled(False)  # nothing listens, and the proxy's pooled connections are dropped
    assert_es_error(send(relay.url, call), 502, UNAVAILABLE_ERROR)
    toxics.clear()
    assert_answers_as_before(relay, call)


@each_call
def test_an_answer_cut_mid_body_never_reaches_the_client_as_a_complete_one(
    relay: Front, toxics: Proxy, call: Call
) -> None:
    toxics.add_toxic("limit_data", bytes=2000)  # past the head, well short of every body here
    outcome = send(relay.url, call)
    assert not outcome.timed_out, "the proxy hung on a cut answer"
    if outcome.response is not None:  # it held the answer back: then nothing reached the client, and a 502 says why
        assert_es_error(outcome, 502, UPSTREAM_ERROR)
    toxics.clear()
    assert_answers_as_before(relay, call)


def test_an_answer_cut_after_its_head_was_relayed_closes_the_client_connection(relay: Front, toxics: Proxy) -> None:
    toxics.add_toxic("limit_data", bytes=BIG_DOC_BYTES // 2)
    outcome = send(relay.url, BIG_DOC)
    assert outcome.response is None and not outcome.timed_out, (
        "a 4 MB body cut in half must reach the client as a broken connection, "
        f"got {outcome.response.status if outcome.response else outcome.failure}")
    toxics.clear()
    assert_answers_as_before(relay, BIG_DOC)


@each_call
def test_a_frozen_cluster_is_an_es_style_504_within_the_response_timeout(
    timed_relay: Front, toxics: Proxy, call: Call
) -> None:
    toxics.add_toxic("timeout", timeout=0)  # the link swallows the answer and keeps the connection open
    outcome = send(timed_relay.url, call)
    assert_es_error(outcome, 504, TIMEOUT_ERROR)
    assert outcome.elapsed_s < TIMEOUT_S + SLACK_S
    toxics.clear()
    assert_answers_as_before(timed_relay, call)


@each_call
def test_a_slow_clusters_late_answer_is_a_504_and_never_reaches_the_next_client(
    timed_relay: Front, toxics: Proxy, call: Call
) -> None:
    toxics.add_toxic("latency", latency=int((TIMEOUT_S + 2 * SLACK_S) * 1000))
    outcome = send(timed_relay.url, call)
    assert_es_error(outcome, 504, TIMEOUT_ERROR)
    assert outcome.elapsed_s < TIMEOUT_S + SLACK_S
    toxics.clear()  # releases the delayed answer onto whichever connection carried the request
    assert_answers_as_before(timed_relay, OTHER[call.name])


@each_call
def test_a_body_stalled_past_the_idle_timeout_is_cut_within_it(timed_relay: Front, toxics: Proxy, call: Call) -> None:
    stall_s = TIMEOUT_S + 2 * SLACK_S
    toxics.add_toxic("slicer", average_size=1000, size_variation=0, delay=int(stall_s * 1e6))  # head, then a stall
    outcome = send(timed_relay.url, call)
    assert outcome.elapsed_s < TIMEOUT_S + SLACK_S, f"waited out the stall: {outcome.failure or outcome.response}"
    if outcome.response is not None:  # held back: a 504 then, since nothing reached the client
        assert_es_error(outcome, 504, TIMEOUT_ERROR)
    toxics.clear()
    assert_answers_as_before(timed_relay, call)


@each_call
def test_a_slow_but_steady_body_outlasts_both_timeouts(timed_relay: Front, toxics: Proxy, call: Call) -> None:
    """The response timeout ends at the head and the idle timeout bounds each gap, neither the whole body."""
    # gaps of 0.4 x the timeout between slices of <= 8 KB: 4-8 of them here, so 1.6-3.2 s in all
    toxics.add_toxic("slicer", average_size=8000, size_variation=0, delay=int(TIMEOUT_S * 0.4 * 1e6))
    outcome = send(timed_relay.url, call)
    assert outcome.response is not None and outcome.response.status == 200, outcome.failure or outcome.response.body
    assert without_took(outcome.response.body) == timed_relay.expected[call.name]
    assert outcome.elapsed_s > TIMEOUT_S, "the harness did not slow the answer past the timeouts"


@each_call
def test_a_connection_the_cluster_keeps_unclean_after_a_400_is_not_reused(
    relay: Front, toxics: Proxy, fault_docs: str, call: Call
) -> None:
    """Elasticsearch answers a too-long header with a complete 400, keeps the socket, and ignores what follows."""
    oversized = {"X-Oversized": "a" * 20_000}
    direct = send(fault_docs, call, extra_headers=oversized)
    assert direct.response is not None and direct.response.status == 400, "the cluster no longer refuses it"
    first = send(relay.url, call, extra_headers=oversized)
    assert first.response is not None, first.failure
    assert (first.response.status, first.response.body) == (400, direct.response.body)
    assert_answers_as_before(relay, call)


# ---- the fake upstream ------------------------------------------------------------------------------------------


@dataclass
class FakeFront:
    """A proxy in front of a fake upstream."""

    fake: FaultServer
    url: str

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80

    def carried(self, call: Call, action: Action | None = None) -> list[int]:
        """The upstream connections that carried `call`'s requests (those answered per `action`), in order."""
        return [request.connection for request in self.fake.requests(call.path, action)]

    def hung(self, call: Call) -> list[int]:
        return self.carried(call, Action.HANG)

    def closed(self, connection: int) -> bool:
        return self.fake.connections[connection].closed_at is not None


@pytest.fixture
def fake_front() -> Iterator[Callable[..., FakeFront]]:
    """Starts a fake upstream and a proxy in front of it, with these `upstream:` settings."""
    with ExitStack() as stack:
        def start(**upstream: Any) -> FakeFront:
            fake = FaultServer()
            config = proxy_config(fake.url)
            if upstream:
                config["upstream"] = upstream
            running = stack.enter_context(RunningProxy(config))
            stack.enter_context(fake)  # stops first, so its silent sockets cannot hold up the proxy's stop
            return FakeFront(fake, running.url)

        yield start


def assert_fake_answers(front: FakeFront, call: Call) -> None:
    outcome = send(front.url, call, timeout_s=TIMEOUT_S + SLACK_S)
    assert outcome.response is not None, f"the next {call.name} got no answer: {outcome.failure}"
    assert outcome.response.status == 200, outcome.response.body[:300]


def test_the_fake_upstream_poisons_hangs_and_sees_closes_as_these_tests_assume() -> None:
    """The harness itself, with no rerank-proxy in between."""
    with FaultServer() as fake:
        fake.plan(Action.POISON, DOC.path)
        with socket.create_connection(fake.address, timeout=SLACK_S) as sock:
            sock.sendall(request_bytes(DOC))
            answer = b""
            while not answer.endswith(POISON_BODY):
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 400 ")
            sock.sendall(request_bytes(DOC))
            sock.settimeout(TIMEOUT_S)
            with pytest.raises(TimeoutError):  # a negative can only be shown by waiting: the socket is spoilt
                sock.recv(65536)
        fake.wait_for(lambda: fake.connections[0].closed_at is not None, SLACK_S, "the client's close being seen")
        fresh = send(fake.url, DOC)
        assert fresh.response is not None and fresh.response.status == 200
        fake.plan(Action.HANG, DOC.path)
        assert send(fake.url, DOC, timeout_s=TIMEOUT_S).timed_out
        hung = fake.requests(DOC.path, Action.HANG)[0].connection
        fake.wait_for(lambda: fake.connections[hung].closed_at is not None, SLACK_S, "the hung client's close")


@each_call
def test_an_upstream_connection_left_unclean_after_a_400_is_not_reused(
    fake_front: Callable[..., FakeFront], call: Call
) -> None:
    front = fake_front()
    front.fake.plan(Action.POISON, call.path)  # answers a complete 400, then ignores the socket
    first = send(front.url, call)
    assert first.response is not None, first.failure
    assert (first.response.status, first.response.body) == (400, POISON_BODY)
    assert_fake_answers(front, call)  # another client, promptly
    carried = front.carried(call)
    assert carried[1] != carried[0], "the second request went down the poisoned connection"


@each_call
@pytest.mark.parametrize("answer", [Action.BAD_STATUS, Action.GARBAGE], ids=lambda action: action.value)
def test_a_malformed_answer_is_an_es_style_502(
    fake_front: Callable[..., FakeFront], call: Call, answer: Action
) -> None:
    front = fake_front()
    front.fake.plan(answer, call.path)  # the socket then stays open and silent: the 502 cannot wait for its close
    assert_es_error(send(front.url, call, timeout_s=TIMEOUT_S + SLACK_S), 502, UPSTREAM_ERROR)
    assert_fake_answers(front, call)


@each_call
def test_each_client_that_hangs_up_has_its_upstream_request_cancelled(
    fake_front: Callable[..., FakeFront], call: Call
) -> None:
    front = fake_front(pool_size=POOL_SIZE)
    front.fake.plan(Action.HANG, call.path, times=HANG_UPS)
    for n in range(1, HANG_UPS + 1):
        with socket.create_connection(front.address) as client:
            client.sendall(request_bytes(call))
            front.fake.wait_for(lambda n=n: len(front.hung(call)) >= n, SLACK_S, f"request {n} reaching the upstream")
        connection = front.hung(call)[-1]
        front.fake.wait_for(lambda c=connection: front.closed(c), SLACK_S,
                            f"the proxy closing the upstream connection of client {n}, who hung up")
    assert_fake_answers(front, call)


@each_call
def test_a_pool_full_of_abandoned_requests_frees_itself(fake_front: Callable[..., FakeFront], call: Call) -> None:
    front = fake_front(pool_size=POOL_SIZE)
    front.fake.plan(Action.HANG, call.path, times=None)
    clients = [socket.create_connection(front.address) for _ in range(HANG_UPS)]
    for client in clients:
        client.sendall(request_bytes(call))
    front.fake.wait_for(lambda: len(front.hung(call)) >= POOL_SIZE, SLACK_S, "the pool filling with hung requests")
    for client in clients:
        client.close()
    front.fake.clear_plan()
    assert_fake_answers(front, call)  # a slot was free for it
    front.fake.wait_for(lambda: all(front.closed(c) for c in front.hung(call)), SLACK_S,
                        "the proxy closing every abandoned upstream connection")


@each_call
def test_a_client_waiting_on_a_hung_upstream_gets_a_504_within_the_response_timeout(
    fake_front: Callable[..., FakeFront], call: Call
) -> None:
    front = fake_front(response_timeout_s=TIMEOUT_S)
    front.fake.plan(Action.HANG, call.path)
    outcome = send(front.url, call)
    assert_es_error(outcome, 504, TIMEOUT_ERROR)
    assert outcome.elapsed_s < TIMEOUT_S + SLACK_S
    hung = front.hung(call)[0]
    front.fake.wait_for(lambda: front.closed(hung), SLACK_S, "the proxy closing the timed-out upstream connection")
    assert_fake_answers(front, call)


def test_upstream_timeouts_and_pool_size_have_the_documented_defaults() -> None:
    options = parse_config({"models": {"minilm": MINILM}}).upstream
    assert (options.connect_timeout_s, options.response_timeout_s, options.idle_timeout_s, options.pool_size,
            options.pool_idle_timeout_s) == (5, 300, 60, 256, 60)
