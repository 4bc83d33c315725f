"""Render the bypass nginx config for a rerank-proxy config.yaml.

    .venv/bin/python docker/nginx/render.py --config config.yaml --listen 0.0.0.0:9200 -o /etc/nginx/nginx.conf
    .venv/bin/python docker/nginx/render.py --config docker/config.yaml --proxy proxy:9201 --listen 0.0.0.0:9202 \
        --check docker/nginx/compose.conf

nginx then sends searches (what `proxy.routing.classify` calls one, GET and POST) to rerank-proxy at the config's
`listen` and everything else straight to its `upstreams`. `--check FILE` exits 1 when FILE is not what would be
rendered, so a shipped config cannot drift from its config.yaml.
"""
from __future__ import annotations

import argparse
import base64
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from proxy.config import Config, ConfigError, load_config

TEMPLATE = Path(__file__).with_name("rerank-bypass.conf.template")
DEFAULT_LISTEN = "127.0.0.1:9202"
DEFAULT_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # nginx verifies against no CA unless told one
# nginx waits this much longer than rerank-proxy would, so the proxy's own ES-style 504 reaches the client first.
READ_TIMEOUT_MARGIN_S = 30


class RenderError(ValueError):
    """config.yaml asks for something this nginx config cannot express."""


# ---- the search matcher ------------------------------------------------------------------------------------------

def _encoded(word: str) -> str:
    """A regex for `word` with any of its characters percent-encoded (hex digits in either case)."""

    def char(c: str) -> str:
        hi, lo = f"{ord(c):02X}"
        lo_class = f"[{lo}{lo.lower()}]" if lo.isalpha() else lo
        return f"(?:{re.escape(c)}|%{hi}{lo_class})"

    return "".join(char(c) for c in word)


def search_path_regex() -> str:
    """PCRE (and Python `re`) pattern for the raw request target of a search, query string included or not.

    Mirrors `classify`: slashes around the path are stripped, at most one index segment (anything but `/`) precedes
    `_search` or `_msearch`, optionally followed by `/template`; each of those words may be percent-encoded.
    `[?]` rather than `\\?`, so nginx's own quoting rules never touch the pattern.
    """
    endpoint = f"(?:{_encoded('_search')}|{_encoded('_msearch')})(?:/{_encoded('template')})?"
    return f"^/+(?:[^/?]+/)?{endpoint}/*(?:[?]|$)"


# ---- config.yaml -> template values ------------------------------------------------------------------------------

_NGINX_SYNTAX = re.compile(r"[\s;{}\"'$#\\]")


def _word(value: str, where: str) -> str:
    """`value` as one nginx argument, refused if it holds characters nginx's syntax gives a meaning."""
    if not value or _NGINX_SYNTAX.search(value):
        raise RenderError(f"{where}: {value!r} cannot be written into an nginx config")
    return value


@dataclass(frozen=True)
class ClusterURL:
    scheme: str
    host: str  # as in a URL: `[::1]` for IPv6
    port: int
    host_header: str  # what a direct client sends: the port only when the URL names one
    userinfo: str | None

    @classmethod
    def parse(cls, url: str) -> ClusterURL:
        parts = urlsplit(url)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise RenderError(f"upstreams: {url!r}: nginx forwards the client's path as is; use a URL without a path")
        host = _word(parts.hostname or "127.0.0.1", "upstreams")
        host = f"[{host}]" if ":" in host else host
        port = parts.port or (443 if parts.scheme == "https" else 80)
        header = f"{host}:{parts.port}" if parts.port else host
        userinfo = None
        if parts.username is not None:
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        return cls(parts.scheme, host, port, header, userinfo)


def proxy_address(listen: str) -> str:
    """Where nginx reaches rerank-proxy: its `listen`, a wildcard host replaced by loopback."""
    host, _, port = listen.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "*": "127.0.0.1"}.get(host, host)
    return f"{host}:{port}"


def _seconds(value: float) -> str:
    return f"{max(1, round(value))}s"


def _cluster_servers(clusters: list[ClusterURL], retry_down_after_s: float) -> str:
    """One `server` line per URL; a failed one rests `retry_down_after_s` (ignored by nginx when it is alone)."""
    down = _seconds(retry_down_after_s)
    return "\n".join(
        f"        server {url.host}:{url.port} max_fails=1 fail_timeout={down}{' backup' if i else ''};"
        for i, url in enumerate(clusters)
    )


def _auth(url: ClusterURL) -> tuple[str, str]:
    """Credentials in the URL: sent when the client sends none, as rerank-proxy does."""
    if url.userinfo is None:
        return "", ""
    token = "Basic " + base64.b64encode(url.userinfo.encode()).decode()
    block = (
        "\n    # Credentials from the cluster URL, used when the client sends none (as rerank-proxy does).\n"
        '    map $http_authorization $rerank_authorization {\n'
        f'        "" "{token}";\n'
        "        default $http_authorization;\n"
        "    }\n"
    )
    return block, "            proxy_set_header Authorization $rerank_authorization;\n"


def _tls(config: Config, url: ClusterURL, ca_bundle: str) -> str:
    if url.scheme != "https":
        return ""
    tls = config.upstream.tls
    # SNI, verification and Host name the first URL: the certificates of backups must cover that name too.
    lines = [
        "\n",
        "            # TLS to the cluster (config.yaml `upstream.tls`).",
        "            proxy_ssl_server_name on;",
        f"            proxy_ssl_name {url.host.strip('[]')};",
        "            proxy_ssl_session_reuse on;",
        f"            proxy_ssl_verify {'on' if tls.verify else 'off'};",
    ]
    if tls.verify:
        ca = _word(str(tls.ca_file or ca_bundle), "upstream.tls.ca_file")
        lines.append(f"            proxy_ssl_trusted_certificate {ca};")
    if tls.client_cert:
        cert = _word(str(tls.client_cert), "upstream.tls.client_cert")
        key = _word(str(tls.client_key or tls.client_cert), "upstream.tls.client_key")
        lines.append(f"            proxy_ssl_certificate {cert};")
        lines.append(f"            proxy_ssl_certificate_key {key};")
    return "\n".join(lines)


def _runtime(runtime_dir: Path | None) -> tuple[str, str]:
    """pid, logs and temp files under `runtime_dir` (an unprivileged nginx); nginx's defaults without one."""
    if runtime_dir is None:
        return "error_log stderr warn;\n\n", "    access_log off;\n\n"
    d = runtime_dir
    main = f"pid {d / 'nginx.pid'};\nerror_log {d / 'error.log'} warn;\n\n"
    temps = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    http = "".join(f"    {name}_temp_path {d / name};\n" for name in temps)
    return main, "    access_log off;\n" + http + "\n"


def values(
    config: Config,
    *,
    source: str,
    listen: str = DEFAULT_LISTEN,
    proxy: str | None = None,
    workers: str = "auto",
    runtime_dir: Path | None = None,
    ca_bundle: str = DEFAULT_CA_BUNDLE,
) -> dict[str, str]:
    """The template's placeholders for `config`."""
    clusters = [ClusterURL.parse(url) for url in config.upstreams]
    schemes = {url.scheme for url in clusters}
    if len(schemes) > 1:
        raise RenderError("upstreams: nginx needs one scheme for all cluster URLs (all http:// or all https://)")
    first = clusters[0]
    # One nginx timeout covers both of the proxy's: waiting for the answer's head and pauses inside its body.
    options = config.upstream
    read_timeout = max(options.response_timeout_s, options.idle_timeout_s) + READ_TIMEOUT_MARGIN_S
    auth_map, auth_header = _auth(first)
    main_runtime, http_runtime = _runtime(runtime_dir)
    return {
        "SOURCE": source,
        "WORKERS": workers,
        "MAIN_RUNTIME": main_runtime,
        "HTTP_RUNTIME": http_runtime,
        "CLUSTER_SERVERS": _cluster_servers(clusters, config.upstream.retry_down_after_s),
        "PROXY": _word(proxy or proxy_address(config.listen), "listen"),
        "SEARCH_REGEX": search_path_regex(),
        "CLUSTER_SCHEME": first.scheme,
        "AUTH_MAP": auth_map,
        "AUTH_HEADER": auth_header,
        "LISTEN": _word(listen, "--listen"),
        "CLUSTER_HOST": first.host_header,
        "CONNECT_TIMEOUT": _seconds(config.upstream.connect_timeout_s),
        "READ_TIMEOUT": _seconds(read_timeout),
        "TLS": _tls(config, first, ca_bundle),
    }


def fill(template: str, placeholders: dict[str, str]) -> str:
    """Replace each `@NAME@`; a placeholder without a value, or a value without a placeholder, is a bug."""
    found = set(re.findall(r"@([A-Z_]+)@", template))
    if found != placeholders.keys():
        raise RenderError(f"template placeholders {sorted(found)} != values {sorted(placeholders)}")
    return re.sub(r"@([A-Z_]+)@", lambda m: placeholders[m.group(1)], template)


def render(config: Config, **options: Any) -> str:
    """The nginx config for `config`; `options` are those of `values`."""
    return fill(TEMPLATE.read_text(encoding="utf-8"), values(config, **options))


# ---- command line ------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="config.yaml", help="rerank-proxy config (its listen and upstreams)")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help=f"where nginx listens (default {DEFAULT_LISTEN})")
    parser.add_argument("--proxy", help="HOST:PORT of rerank-proxy (default: the config's listen)")
    parser.add_argument("--upstream", action="append", help="cluster URL, overriding the config's upstreams")
    parser.add_argument("--workers", default="auto", help="nginx worker_processes")
    parser.add_argument("--runtime-dir", type=Path, help="put pid, error log and temp files here (unprivileged)")
    parser.add_argument("--ca-bundle", default=DEFAULT_CA_BUNDLE, help="CAs for an https cluster without ca_file")
    parser.add_argument("--output", "-o", type=Path, help="write here instead of stdout")
    parser.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE differs from the rendering")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.upstream:
            config = config.with_overrides(upstreams=args.upstream)
        text = render(
            config, source=args.config, listen=args.listen, proxy=args.proxy, workers=args.workers,
            runtime_dir=args.runtime_dir, ca_bundle=args.ca_bundle,
        )
    except (ConfigError, RenderError) as err:
        print(f"render: {err}", file=sys.stderr)
        return 2
    if args.check:
        if args.check.read_text(encoding="utf-8") != text:
            print(f"{args.check} is out of date with {args.config}; render it again", file=sys.stderr)
            return 1
        return 0
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
