"""What deliveries are sent through: one httpx.Request in, one streamed httpx.Response out.

Tools speak httpx (its Request/Response, its exceptions), but a flush of parked tasks spends most
of its CPU in the HTTP client, and httpx.AsyncClient adds work a delivery does not want: its cookie
jar (consulted and fed on every exchange even when it refuses everything), default-header and URL
merging, auth and redirect wrappers, and httpcore/anyio underneath (~0.5 ms of CPU per request
here, against ~0.15 ms for aiohttp's client). So a delivery goes straight to a transport:
httpx-aiohttp's (aiohttp's connection pool, as the openai SDK offers it), with no cookie jar
anywhere and no redirects followed (a 3xx is the destination's answer to classify). TLS is
verified exactly as httpx does it (certifi's roots, or SSL_CERT_FILE / SSL_CERT_DIR when set), not
with aiohttp's default of the system store, so a delivery trusts the same servers either way.

httpx ignores the proxy environment once it is given a transport, so with HTTP(S)_PROXY or
ALL_PROXY set a delivery goes through a plain httpx.AsyncClient instead, which honours them and
NO_PROXY as httpx always has (with a jar that never stores or sends a cookie).

A request held to public addresses (`public_only`: a model's call, reach.py) goes through
connectors of its own whose resolver answers only public addresses, so what is checked is what is
connected to.
"""

from __future__ import annotations

import http.cookiejar
import os
import ssl as ssl_module
from types import TracebackType
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from waystation.adapters.tools.reach import PublicOnlyResolver, check_resolved, refused_literal

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


class DeliveryClient:
    """Sends a request exactly as built: no cookies, no redirects, no added defaults but aiohttp's."""

    def __init__(self) -> None:
        self._proxied: httpx.AsyncClient | None = None
        # By (https, public only), each made at its first request: https:// loads the CA bundle.
        self._transports: dict[tuple[bool, bool], AiohttpTransport] = {}
        self._tls_context: ssl_module.SSLContext | None = None
        if any(os.environ.get(name) for name in PROXY_VARIABLES):
            self._proxied = httpx.AsyncClient(cookies=_NoCookies(), follow_redirects=False)

    async def send(self, request: httpx.Request, *, public_only: bool = False) -> httpx.Response:
        """The destination's answer with its body not yet read (read it, then aclose it).
        `public_only`: connect only to public addresses, else raise DestinationRefused."""
        if public_only and (refused := refused_literal(request.url)) is not None:
            raise refused
        if self._proxied is not None:
            if public_only:
                await check_resolved(request.url.host, request.url.port or 0)
            return await self._proxied.send(request, stream=True)
        # httpx decodes the body, so offer only what it always can: aiohttp would advertise br or
        # zstd whenever some library for them is installed, and httpx looks for different ones.
        request.headers.setdefault("accept-encoding", "gzip, deflate")
        try:
            response = await self._transport_for(request.url, public_only).handle_async_request(request)
        except httpx.ConnectTimeout as exc:
            raise _as_httpx_names_it(exc, request) from exc.__cause__
        response.request = request
        return response

    def _transport_for(self, url: httpx.URL, public_only: bool) -> AiohttpTransport:
        key = (url.scheme == "https", public_only)
        if key not in self._transports:
            ssl: ssl_module.SSLContext | bool = False
            if url.scheme == "https":
                if self._tls_context is None:
                    # Loading the CA bundle takes ~25 ms: paid at the first https:// delivery, not
                    # at start-up and not before the first delivery over plain http.
                    self._tls_context = httpx.create_ssl_context()
                ssl = self._tls_context
            self._transports[key] = AiohttpTransport(client=lambda: _session(ssl, public_only))
        return self._transports[key]

    async def aclose(self) -> None:
        if self._proxied is not None:
            await self._proxied.aclose()
        for transport in self._transports.values():
            await transport.aclose()

    async def __aenter__(self) -> DeliveryClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def new_client() -> DeliveryClient:
    return DeliveryClient()


def _as_httpx_names_it(exc: httpx.ConnectTimeout, request: httpx.Request) -> httpx.TransportError:
    """The error httpx itself would raise. httpx-aiohttp calls nearly every aiohttp connection
    error a ConnectTimeout (its map lets the broader aiohttp class win), so a refused connection,
    a name that does not resolve or a certificate refused in 2 ms would be told, and stored in the
    task, as "no answer within 30s"."""
    cause = exc.__cause__
    if isinstance(cause, TimeoutError) or not isinstance(cause, aiohttp.ClientConnectionError):
        return exc  # a timeout indeed (aiohttp's timeouts are TimeoutErrors), or not aiohttp's
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(str(cause), request=request)
    return httpx.ConnectError(str(cause), request=request)


def _session(ssl: ssl_module.SSLContext | bool, public_only: bool) -> aiohttp.ClientSession:
    # Made on the first request, inside the running event loop (aiohttp binds to it). It never
    # reads the environment itself: that costs a thread hop per request for netrc and proxy
    # lookups (httpx's TLS context has read SSL_CERT_FILE/SSL_CERT_DIR once already).
    connector = aiohttp.TCPConnector(ssl=ssl, resolver=PublicOnlyResolver() if public_only else None)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)


class _NoCookies(http.cookiejar.CookieJar):
    """A jar that neither keeps a Set-Cookie nor sends one: one task's session never leaks into
    another's through a long-lived client."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def add_cookie_header(self, request: Any) -> None:
        return None
