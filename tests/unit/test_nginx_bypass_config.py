"""The bypass nginx config (docker/nginx/): its search matcher is `proxy.routing.classify`, and real nginx forwards
every request target untouched to the side the matcher picks."""
from __future__ import annotations

import itertools
import re
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import Config, load_config, parse_config
from proxy.routing import Kind, classify
from tests.nginx import Nginx, RawClient, load_renderer, nginx_binary, nginx_test
from tests.proxyrunner import MINILM

ROOT = Path(__file__).resolve().parents[2]
render = load_renderer()

PREFIXES = ["/", "//"]
INDICES = ["", "idx/", "a,b/", "a%2Cb/", "a%2Fb/", "logs-*/", "x/y/", "idx//", "%C3%A9/", "é/", "_all/", "a#b/",
           "_search/", "template/", "idx/./", "x/../"]
ENDPOINTS = ["_search", "_msearch", "_search/template", "_msearch/template", "%5Fsearch", "%5fm%73earch",
             "_search/%74emplat%65", "_SEARCH", "_searchx", "x_search", "_search/x", "_search/template/x",
             "_search%2Ftemplate", "_search/scroll", "_doc/1", "_doc/..", "_bulk", "_cat/indices", "template", ""]
SUFFIXES = ["", "/", "//", "?q=x", "/?q=%ZZ&size=0", "?", "#frag", "?a=/_search"]

# Targets nginx itself refuses with 400 (it cannot normalise them), so neither side sees them; the cluster's own
# answers are 4xx too (404, 405), with another body.
NGINX_REFUSES = [b"/../_search", b"/%2e%2e/_search", b"/idx%ZZ/_search", b"/a%00b/_search"]


def corpus() -> list[str]:
    """Every combination: searches, near misses, encodings, extra slashes, query strings."""
    return ["".join(parts) for parts in itertools.product(PREFIXES, INDICES, ENDPOINTS, SUFFIXES)]


def classified_search(method: str, target: str) -> bool:
    """The spec: classify on the raw path (the query string cut off), as the proxy reads the request line."""
    return classify(method, target.partition("?")[0]).kind is not Kind.PASSTHROUGH


def shipped_regex(conf_text: str) -> re.Pattern[str]:
    """The search regex exactly as it appears in a rendered nginx config."""
    (pattern,) = re.findall(r'^\s*"~(.*)" 1;$', conf_text, re.MULTILINE)
    return re.compile(pattern)


def config(**overrides: object) -> Config:
    return parse_config({"models": {"minilm": MINILM}, **overrides})


# ---- the matcher, in Python -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def matcher() -> re.Pattern[str]:
    return shipped_regex(render.render(load_config(ROOT / "config.yaml"), source="config.yaml"))


def test_corpus_has_both_kinds_and_classify_cases_of_note() -> None:
    paths = corpus()
    assert sum(classified_search("GET", p) for p in paths) > 200
    assert classified_search("GET", "/a%2Fb/_search")  # an encoded slash stays inside the index segment
    assert classified_search("POST", "//_msearch/template//?x")
    assert not classified_search("GET", "/idx//_search")  # an empty segment: two before the endpoint
    assert not classified_search("GET", "/_search%2Ftemplate")


def test_regex_agrees_with_classify_on_the_corpus(matcher: re.Pattern[str]) -> None:
    wrong = [p for p in corpus() if bool(matcher.search(p)) != classified_search("GET", p)]
    assert not wrong, wrong[:20]


_PIECES = st.sampled_from(["/", "_search", "_msearch", "template", "_", "%5F", "%5f", "%73", "%2F", "%", "idx",
                           "a,b", "s", "?", "x", "..", ".", "#", "é", "%74"])


@settings(max_examples=2000, deadline=None)
@given(st.lists(_PIECES, max_size=8).map(lambda parts: "/" + "".join(parts)))
def test_regex_agrees_with_classify_on_any_path(matcher: re.Pattern[str], target: str) -> None:
    assert bool(matcher.search(target)) == classified_search("GET", target)


# ---- the renderer -----------------------------------------------------------------------------------------------

def test_values_follow_listen_and_upstreams() -> None:
    cfg = config(listen="0.0.0.0:9301", upstreams=["http://10.0.0.1:9200", "http://10.0.0.2"],
                 upstream={"connect_timeout_s": 2, "response_timeout_s": 90, "retry_down_after_s": 30})
    values = render.values(cfg, source="x")
    assert values["PROXY"] == "127.0.0.1:9301"
    assert values["CLUSTER_SERVERS"].splitlines() == [
        "        server 10.0.0.1:9200 max_fails=1 fail_timeout=30s;",
        "        server 10.0.0.2:80 max_fails=1 fail_timeout=30s backup;",
    ]
    assert values["CLUSTER_HOST"] == "10.0.0.1:9200"
    assert (values["CONNECT_TIMEOUT"], values["READ_TIMEOUT"]) == ("2s", "120s")  # max(90, idle 60) + 30
    assert values["AUTH_HEADER"] == values["TLS"] == ""


def test_rendered_config_has_the_relay_settings() -> None:
    text = render.render(load_config(ROOT / "config.yaml"), source="config.yaml")
    for line in ("proxy_pass $rerank_backend;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";',
                 "proxy_request_buffering off;", "client_max_body_size 100m;", "keepalive 64;",
                 "proxy_set_header Host 127.0.0.1:9200;", "server 127.0.0.1:9201;"):
        assert line in text
    assert "@" not in text.replace("@SOURCE@", "")


def test_credentials_and_tls_come_from_the_url_and_upstream_tls() -> None:
    cfg = config(upstreams=["https://elastic:s%40cret@10.0.0.1:9243"], upstream={"tls": {"ca_file": "/ca.pem"}})
    text = render.render(cfg, source="x")
    assert '"" "Basic ZWxhc3RpYzpzQGNyZXQ=";' in text  # elastic:s@cret
    assert "default https://rerank_cluster;" in text
    assert "proxy_ssl_trusted_certificate /ca.pem;" in text and "proxy_ssl_verify on;" in text


@pytest.mark.parametrize("upstreams, message", [
    (["http://a:9200", "https://b:9200"], "one scheme"),
    (["http://a:9200/prefix"], "without a path"),
    (["http://a;b:9200"], "cannot be written"),
])
def test_what_nginx_cannot_express_is_refused(upstreams: list[str], message: str) -> None:
    with pytest.raises(render.RenderError, match=message):
        render.values(config(upstreams=upstreams), source="x")


def test_shipped_compose_config_is_rendered_from_docker_config_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    args = ["--config", "docker/config.yaml", "--proxy", "proxy:9201", "--listen", "0.0.0.0:9202"]
    assert render.main([*args, "--check", "docker/nginx/compose.conf"]) == 0


# ---- real nginx -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, cfg", [
    ("config.yaml", lambda: load_config(ROOT / "config.yaml")),
    ("https, credentials, backups", lambda: config(
        upstreams=["https://u:p@127.0.0.1:9243", "https://127.0.0.2:9243"], upstream={"tls": {"verify": False}})),
])
def test_rendered_configs_pass_nginx_t(tmp_path: Path, name: str, cfg) -> None:
    binary = nginx_binary()
    conf = tmp_path / "nginx.conf"
    conf.write_text(render.render(cfg(), source=name, runtime_dir=tmp_path), encoding="utf-8")
    result = nginx_test(binary, conf)
    assert result.returncode == 0, result.stderr


class _Recorder(socketserver.ThreadingTCPServer):
    """A stand-in upstream: answers every request with its own name and the request line it received."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, name: str):
        self.name = name.encode()
        super().__init__(("127.0.0.1", 0), _RecorderHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _RecorderHandler(socketserver.StreamRequestHandler):
    server: _Recorder

    def handle(self) -> None:
        while request_line := self.rfile.readline().rstrip(b"\r\n"):
            length = 0
            while (line := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            self.rfile.read(length)
            body = b"" if request_line.startswith(b"HEAD ") else request_line
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Upstream: %s\r\nX-Line-Length: %d\r\nContent-Length: %d\r\n\r\n%s"
                             % (self.server.name, len(request_line), len(body), body))


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawClient]:
    nginx_binary()
    cluster, proxy = _Recorder("cluster"), _Recorder("proxy")
    cfg = config(listen=proxy.address, upstreams=[f"http://{cluster.address}"])
    try:
        with Nginx(tmp_path_factory.mktemp("nginx"), cfg) as nginx:
            client = RawClient(nginx.port)
            yield client
            client.close()
    finally:
        for server in (cluster, proxy):
            server.shutdown()
            server.server_close()


def test_real_nginx_routes_like_classify_and_forwards_targets_untouched(routed: RawClient) -> None:
    wrong = []
    for target in corpus():
        for method in ("GET", "POST", "PUT", "DELETE"):
            response = routed.request(method, target.encode())
            expected = b"proxy" if classified_search(method, target) else b"cluster"
            line = b"%s %s HTTP/1.1" % (method.encode(), target.encode())
            if (response.status, response.header("X-Upstream"), response.body) != (200, expected, line):
                wrong.append((method, target, response.status, response.header("X-Upstream"), response.body))
    assert not wrong, wrong[:10]


def test_head_on_a_search_path_goes_to_the_cluster(routed: RawClient) -> None:
    response = routed.request("HEAD", b"/idx/_search")
    assert (response.status, response.header("X-Upstream")) == (200, b"cluster")


@pytest.mark.parametrize("target", NGINX_REFUSES)
def test_targets_nginx_cannot_parse_are_refused_by_nginx(routed: RawClient, target: bytes) -> None:
    response = routed.request("GET", target)
    assert response.status == 400 and response.header("X-Upstream") is None
