"""The admin endpoints are not open to data-port clients: on their own listener the data port serves only the
cluster's API; on the data port they answer only with the bearer token. Both listeners speak TLS when configured,
with client certificates verified when asked."""
from __future__ import annotations

from typing import Any

import httptools
import orjson
import pytest
import trustme
import urllib3

from proxy.config import ConfigError
from tests.integration.conftest import proxy_config, raw
from tests.proxyrunner import RunningProxy
from tests.rawhttp import exchange

ADMIN_PATHS = ["/_rerank_proxy/health", "/_rerank_proxy/metrics", "/_rerank_proxy/ready", "/_rerank_proxy/live"]
TOKEN = "s3cret-admin-token"


@pytest.fixture(scope="module")
def es_proxy(scifact_es: str):
    with RunningProxy(proxy_config(scifact_es)) as running:
        yield running


@pytest.mark.parametrize("path", [*ADMIN_PATHS, "/_rerank_proxy/reload", "/%5Frerank_proxy/health"])
def test_data_port_answers_admin_paths_as_the_cluster_does(es_proxy, scifact_es, path):
    method = "POST" if path.endswith("reload") else "GET"
    direct = exchange(scifact_es, method, path)
    proxied = exchange(es_proxy.url, method, path)
    assert (proxied.status, proxied.body) == (direct.status, direct.body)
    assert proxied.status >= 400  # the cluster has no such API: nothing of the proxy's is shown


def test_admin_listener_serves_the_proxy_endpoints(es_proxy):
    assert es_proxy.admin_url != es_proxy.url
    health = orjson.loads(raw("GET", f"{es_proxy.admin_url}/_rerank_proxy/health").body)
    assert health["status"] == "green" and health["models"] == {"minilm": "ready"}
    assert raw("GET", f"{es_proxy.admin_url}/_rerank_proxy/live").status == 200
    ready = raw("GET", f"{es_proxy.admin_url}/_rerank_proxy/ready")
    assert ready.status == 200 and orjson.loads(ready.body)["ready"] is True
    assert b"rerank_proxy_requests_total" in raw("GET", f"{es_proxy.admin_url}/_rerank_proxy/metrics").body


@pytest.mark.parametrize("path", ["/scifact/_search", "/_cat/indices", "/", "/scifact/_doc/1"])
def test_admin_listener_never_reaches_the_cluster(es_proxy, path):
    answer = exchange(es_proxy.admin_url, "GET", path)
    assert answer.status == 404
    assert orjson.loads(answer.body)["error"]["type"] == "rerank_proxy_admin_exception"


def _token_proxy(upstream: str, monkeypatch: pytest.MonkeyPatch, listen: str | None) -> RunningProxy:
    monkeypatch.setenv("RERANK_TEST_ADMIN_TOKEN", TOKEN)
    return RunningProxy(proxy_config(upstream, admin={"listen": listen, "token_env": "RERANK_TEST_ADMIN_TOKEN"}))


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer", f"bearer {TOKEN}x"])
def test_admin_on_the_data_port_refuses_requests_without_the_token(scifact_es, monkeypatch, authorization):
    with _token_proxy(scifact_es, monkeypatch, None) as running:
        assert running.admin_url == running.url
        headers = [("Authorization", authorization)] if authorization else []
        for path in ADMIN_PATHS:
            answer = exchange(running.url, "GET", path, headers)
            assert answer.status == 401, path
            assert answer.header("WWW-Authenticate") == b'Bearer realm="rerank-proxy"'
            assert TOKEN.encode() not in answer.body


def test_admin_on_the_data_port_answers_with_the_token(scifact_es, monkeypatch):
    with _token_proxy(scifact_es, monkeypatch, None) as running:
        answer = exchange(running.url, "GET", "/_rerank_proxy/health", [("Authorization", f"Bearer {TOKEN}")])
        assert answer.status == 200 and orjson.loads(answer.body)["models"] == {"minilm": "ready"}
        assert TOKEN.encode() not in answer.body
        # The cluster's API is served on the same port as before.
        assert exchange(running.url, "GET", "/scifact/_doc/nope").status == 404


def test_token_guards_the_admin_listener_too(scifact_es, monkeypatch):
    with _token_proxy(scifact_es, monkeypatch, "127.0.0.1:0") as running:
        assert exchange(running.admin_url, "GET", "/_rerank_proxy/health").status == 401
        authorized = [("Authorization", f"Bearer {TOKEN}")]
        assert exchange(running.admin_url, "GET", "/_rerank_proxy/health", authorized).status == 200


def test_a_token_variable_that_is_not_set_stops_the_start(scifact_es, monkeypatch):
    monkeypatch.delenv("RERANK_TEST_UNSET_TOKEN", raising=False)
    proxy = RunningProxy(proxy_config(scifact_es, admin={"listen": None, "token_env": "RERANK_TEST_UNSET_TOKEN"}))
    with pytest.raises(ConfigError, match="RERANK_TEST_UNSET_TOKEN is not set"):
        proxy.__enter__()


# ---- TLS ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CA, the proxy's certificate for 127.0.0.1 and a client certificate, as files."""
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@example.com")
    files = {
        "ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key",
        "client": folder / "client.pem",
    }
    ca.cert_pem.write_to_path(files["ca"])
    server.cert_chain_pems[0].write_to_path(files["cert"])
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(files["cert"], append=True)
    server.private_key_pem.write_to_path(files["key"])
    client.private_key_and_cert_chain_pem.write_to_path(files["client"])
    return files


def _tls(pki: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"cert_file": str(pki["cert"]), "key_file": str(pki["key"]), **extra}


def _https(pki: dict[str, Any], client_cert: bool = False) -> urllib3.PoolManager:
    return urllib3.PoolManager(retries=False, ca_certs=str(pki["ca"]), cert_file=str(pki["client"]) if client_cert
                               else None)


def test_data_and_admin_ports_speak_tls(scifact_es, pki):
    config = proxy_config(scifact_es, tls=_tls(pki), admin={"listen": "127.0.0.1:0", "tls": _tls(pki)})
    with RunningProxy(config) as running:
        assert running.url.startswith("https://") and running.admin_url.startswith("https://")
        http = _https(pki)
        direct = raw("GET", f"{scifact_es}/scifact/_doc/nope")
        through = http.request("GET", f"{running.url}/scifact/_doc/nope")
        assert (through.status, through.data) == (direct.status, direct.body)
        searched = http.request("POST", f"{running.url}/scifact/_search", body=b'{"query":{"match":{"title":"cell"}}}',
                                headers={"Content-Type": "application/json"})
        assert searched.status == 200 and searched.headers["X-Rerank-Status"] == "reranked"
        assert http.request("GET", f"{running.admin_url}/_rerank_proxy/live").status == 200
        with pytest.raises(urllib3.exceptions.SSLError):  # the certificate is checked by the client
            urllib3.PoolManager(retries=False).request("GET", f"{running.url}/scifact/_doc/nope")


def test_client_certificates_are_required_when_configured(scifact_es, pki):
    config = proxy_config(scifact_es, tls=_tls(pki, client_ca_file=str(pki["ca"])))
    with RunningProxy(config) as running:
        assert _https(pki, client_cert=True).request("GET", f"{running.url}/scifact/_doc/nope").status == 404
        with pytest.raises((urllib3.exceptions.SSLError, urllib3.exceptions.ProtocolError)):
            _https(pki).request("GET", f"{running.url}/scifact/_doc/nope")


def test_optional_client_certificates_let_clients_without_one_in(scifact_es, pki):
    config = proxy_config(scifact_es, tls=_tls(pki, client_ca_file=str(pki["ca"]), client_auth="optional"))
    with RunningProxy(config) as running:
        assert _https(pki).request("GET", f"{running.url}/scifact/_doc/nope").status == 404


def test_plain_http_on_a_tls_port_is_not_served(scifact_es, pki):
    with RunningProxy(proxy_config(scifact_es, tls=_tls(pki))) as running:
        with pytest.raises((ConnectionError, OSError, httptools.HttpParserError)):
            exchange(running.url.replace("https://", "http://"), "GET", "/scifact/_doc/nope")
