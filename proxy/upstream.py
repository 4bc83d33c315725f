"""The connection pool to the cluster: keep-alive, TLS, and failover to the next URL on connection errors.

Bodies are never decompressed here (`auto_decompress=False`): what the cluster sends is what the client gets.
"""
from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterable, Mapping
from typing import Any

import aiohttp
from multidict import CIMultiDict

from .config import Config, UpstreamOptions

# Per-connection headers (RFC 9110 7.6.1) are not forwarded in either direction; the rest is.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
        "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Host",
    )
)


class UpstreamUnavailable(ConnectionError):
    """No upstream URL accepted the connection."""


def forwardable(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """Request/response headers minus the hop-by-hop ones (and those named in `Connection`), order kept.

    Copies whole and deletes the few that are present: on every request and response, cheaper than testing each
    header's name in Python."""
    copy = CIMultiDict(headers)
    connection = copy.get("Connection")
    if connection is not None:
        for name in connection.split(","):
            copy.popall(name.strip(), None)
    for name in HOP_BY_HOP:
        if name in copy:
            del copy[name]
    return copy


def _ssl_context(options: UpstreamOptions) -> ssl.SSLContext | bool:
    tls = options.tls
    if not tls.verify:
        return False
    if tls.ca_file is None and tls.client_cert is None:
        return True
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.client_cert:
        context.load_cert_chain(str(tls.client_cert), str(tls.client_key) if tls.client_key else None)
    return context


class Upstream:
    def __init__(self, config: Config):
        options = config.upstream
        self.urls = list(config.upstreams)
        self._down_until = [0.0] * len(self.urls)
        self._all = list(range(len(self.urls)))
        self._retry_after = options.retry_down_after_s
        connector = aiohttp.TCPConnector(limit=options.pool_size, ssl=_ssl_context(options), ttl_dns_cache=60)
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type", "Accept"),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=options.connect_timeout_s, sock_read=options.read_timeout_s
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    def _order(self) -> list[int]:
        """Healthy URLs first (in configured order), then the ones that failed recently."""
        if not any(self._down_until):  # the usual case: nothing failed, no clock read, no sort
            return self._all
        now = time.monotonic()
        return sorted(self._all, key=lambda i: self._down_until[i] > now)

    async def request(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        body: bytes | AsyncIterable[bytes] | aiohttp.StreamReader | None,
    ) -> aiohttp.ClientResponse:
        """Send to the first URL that connects. A streamed body can still fail over: it is only read once connected."""
        errors = []
        for i in self._order():
            try:
                response = await self.session.request(
                    method, self.urls[i] + path_qs, headers=headers, data=body, allow_redirects=False
                )
            except aiohttp.ClientConnectorError as err:
                self._down_until[i] = time.monotonic() + self._retry_after
                errors.append(f"{self.urls[i]}: {err.os_error.strerror or err}")
                continue
            self._down_until[i] = 0.0
            return response
        raise UpstreamUnavailable("; ".join(errors))

    async def get_json(self, path_qs: str) -> Any:
        response = await self.request("GET", path_qs, {"Accept": "application/json"}, None)
        async with response:
            if response.status != 200:
                return None
            return await response.json(content_type=None)

    async def close(self) -> None:
        await self.session.close()
