"""Which redirects a delivery follows, and what the next request carries (README: "Delivery
semantics")."""

from __future__ import annotations

from collections.abc import Collection

import httpx

from waystation.redact import CREDENTIAL_NAME

MAX_REDIRECTS = 5


def redirected(
    request: httpx.Request, response: httpx.Response, secret_headers: Collection[str] = ()
) -> httpx.Request | None:
    """The request a redirect asks for, as a user would expect it followed; None to stop here.

    GET and HEAD follow 301, 302, 303, 307 and 308; 307 and 308 keep any method and its body; 303
    turns another method into a body-less GET; a 301 or 302 to another method is the answer (what
    the destination did with the request is unknown). Another origin gets neither the
    Idempotency-Key nor a header that may be a credential (named like one, or in `secret_headers`:
    those whose value a task's secret reference gave); an upgrade from http to https on the same
    host, both on their default ports, is the same site.
    """
    location = response.headers.get("location")
    status, method = response.status_code, request.method
    if location is None or status not in (301, 302, 303, 307, 308):
        return None
    if status in (301, 302) and method not in ("GET", "HEAD"):
        return None
    try:
        url = request.url.join(location)
    except httpx.InvalidURL:
        return None
    if url.scheme not in ("http", "https"):
        return None
    content: bytes | None = request.content or None
    headers = dict(request.headers)
    if status == 303 and method != "HEAD":
        method, content = "GET", None
        headers.pop("content-type", None)
    if not (same_origin(request.url, url) or https_upgrade(request.url, url)):
        # Nor the key (idempotency-key), nor anything named like a credential.
        headers = {
            k: v for k, v in headers.items() if not CREDENTIAL_NAME.fullmatch(k) and k not in secret_headers
        }
    headers.pop("content-length", None)
    headers.pop("host", None)
    return httpx.Request(method, url, headers=headers, content=content, extensions=request.extensions)


# Origins as httpx (`_same_origin`, `_is_https_redirect`) and requests (`should_strip_auth`) compare
# them before they keep Authorization: RFC 6454's scheme, host and port, the port the scheme's
# default when the URL names none; an http page on port 80 moving to https on 443 stays the site.
_DEFAULT_PORTS = {"http": 80, "https": 443}


def port_of(url: httpx.URL) -> int | None:
    """The port a URL connects to: the one it names, else its scheme's default."""
    return url.port or _DEFAULT_PORTS.get(url.scheme)


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return a.scheme == b.scheme and a.host == b.host and port_of(a) == port_of(b)


def https_upgrade(a: httpx.URL, b: httpx.URL) -> bool:
    """http://host/ to https://host/, both on the scheme's default port (80, then 443)."""
    return a.host == b.host and (a.scheme, port_of(a), b.scheme, port_of(b)) == ("http", 80, "https", 443)
