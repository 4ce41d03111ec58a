"""The HTTP client deliveries go through: httpx, on aiohttp's wire when no proxy is configured.

Tools speak httpx (its Request/Response, its exceptions, its MockTransport in tests), but httpx's
own connection layer (httpcore on anyio) costs ~0.7 ms of CPU per request here, which capped a
flush of parked tasks near 500 deliveries/s. The same requests through aiohttp's connection pool
(httpx-aiohttp's transport, the one the openai SDK offers) cost about half.

httpx ignores the proxy environment once it is given a transport, so with HTTP(S)_PROXY or
ALL_PROXY set the client keeps httpx's own transport, which honours them and NO_PROXY exactly as
before. The aiohttp session never reads the environment itself: that would cost a thread hop per
request for its netrc and proxy lookups.
"""

from __future__ import annotations

import http.cookiejar
import os

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def new_client() -> httpx.AsyncClient:
    """An httpx client fit for deliveries: no cookie jar, no redirects (proxy env is honoured).

    httpx keeps every Set-Cookie in the client's jar and sends it back on later requests; a
    long-lived delivery client would silently carry one task's session into another's, so the
    jar refuses everything (and so does aiohttp's, underneath). Redirects are not followed
    because a 3xx is the destination's answer to classify (and httpx would turn a redirected
    POST into a GET).
    """
    no_cookies = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return httpx.AsyncClient(cookies=no_cookies, follow_redirects=False)
    transport = AiohttpTransport(client=_session)
    return httpx.AsyncClient(cookies=no_cookies, follow_redirects=False, transport=transport)


def _session() -> aiohttp.ClientSession:
    # Made on the first request, inside the running event loop (aiohttp binds to it).
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
