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
    host is the same site.
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
    same_site = url.host == request.url.host and (
        (url.scheme == request.url.scheme and url.port == request.url.port) or url.scheme == "https"
    )
    if not same_site:
        # Nor the key (idempotency-key), nor anything named like a credential.
        headers = {
            k: v for k, v in headers.items() if not CREDENTIAL_NAME.fullmatch(k) and k not in secret_headers
        }
    headers.pop("content-length", None)
    headers.pop("host", None)
    return httpx.Request(method, url, headers=headers, content=content, extensions=request.extensions)
