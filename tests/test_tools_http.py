"""The HTTP tools against real loopback servers: validation, delivery, and how answers are kept."""

from __future__ import annotations

import asyncio
import email.utils
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from waystation import __version__, timeutil
from waystation.adapters.tools import (
    MAX_REQUEST_BODY_BYTES,
    MAX_RESULT_BYTES,
    DeliveryClient,
    DeliveryResult,
    HttpRequestTool,
    ToolRegistry,
    WebFetchTool,
    default_tools,
    new_client,
)
from waystation.adapters.tools.redirects import redirected
from waystation.errors import InvalidArguments, NetworkUnreachable, UnknownTool

HTTP = HttpRequestTool()
FETCH = WebFetchTool()
KEY = "task-key-0001"


# --- servers -------------------------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    release = asyncio.Event()  # holds the hanging handlers until the test is over

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "method": request.method,
                "path": request.path,
                "headers": {name.lower(): value for name, value in request.headers.items()},
                "body": await request.text(),
            }
        )

    async def retry_delta(request: web.Request) -> web.Response:
        return web.Response(status=503, text="busy", headers={"Retry-After": "7"})

    async def retry_date(request: web.Request) -> web.Response:
        when = datetime.now(UTC) + timedelta(seconds=120)
        return web.Response(
            status=429,
            text="slow down",
            headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)},
        )

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (MAX_RESULT_BYTES * 3), content_type="text/plain")

    async def split_char(request: web.Request) -> web.Response:
        # "a" then two-byte characters: the cut at MAX_RESULT_BYTES falls inside one of them.
        text = "a" + "é" * MAX_RESULT_BYTES
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def cookie(request: web.Request) -> web.Response:
        response = web.Response(text="hi", content_type="text/plain", headers={"ETag": '"v1"'})
        response.set_cookie("session", "s3cr3t-session-value")
        response.headers["WWW-Authenticate"] = 'Bearer realm="x"'
        return response

    async def gzipped(request: web.Request) -> web.Response:
        response = web.Response(text="squeezed " * 200, content_type="text/plain")
        response.enable_compression(web.ContentCoding.gzip)
        return response

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/echo"})

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="too late")

    async def stall_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=201, headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(b"partial ")
        await release.wait()
        return response

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/retry-delta", retry_delta)
    app.router.add_get("/retry-date", retry_date)
    app.router.add_get("/big", big)
    app.router.add_get("/split-char", split_char)
    app.router.add_get("/cookie", cookie)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/gzipped", gzipped)
    app.router.add_get("/hang", hang)
    app.router.add_get("/stall-body", stall_body)
    test_server = TestServer(app, host="127.0.0.1", port=0)
    await test_server.start_server()
    try:
        yield test_server
    finally:
        release.set()
        await test_server.close()


@pytest.fixture
async def client() -> AsyncIterator[DeliveryClient]:
    async with new_client() as delivery_client:
        yield delivery_client


def url(server: TestServer, path: str) -> str:
    return str(server.make_url(path))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens here now: connecting is refused


async def echoed(result: DeliveryResult) -> dict[str, Any]:
    assert result.status == 200, result
    data: dict[str, Any] = json.loads(result.body)
    return data


# --- validation ----------------------------------------------------------------------------------


def test_http_request_args_are_normalized() -> None:
    assert HTTP.validate({"url": "https://example.com/x"}) == {
        "method": "GET",
        "url": "https://example.com/x",
        "headers": {},
    }
    payload = {"a": [1, 2.5, None, True], "b": {"c": "é"}}
    normalized = HTTP.validate(
        {
            "method": "post",
            "url": "http://example.com:8080/api?q=1",
            "headers": {"X-Trace": "  abc ", "Content-Type": "application/vnd.x+json"},
            "json": payload,
            "body": None,  # null counts as absent
        }
    )
    assert normalized == {
        "method": "POST",
        "url": "http://example.com:8080/api?q=1",
        "headers": {"x-trace": "abc", "content-type": "application/vnd.x+json"},
        "json": payload,
    }
    assert normalized["json"] is not payload
    assert HTTP.validate({"url": "http://h/", "method": "Delete", "body": ""})["body"] == ""
    for method in ("get", "HEAD", "put", "PATCH", "options"):
        assert HTTP.validate({"url": "http://h/", "method": method})["method"] == method.upper()


def test_web_fetch_args_are_normalized() -> None:
    assert FETCH.validate({"url": "https://example.org/page"}) == {"url": "https://example.org/page"}


BAD_HTTP_ARGS: list[tuple[object, str]] = [
    (["http://example.com"], "arguments must be a JSON object, not an array"),
    ("http://example.com", "arguments must be a JSON object, not a string"),
    ({}, "url is required"),
    ({"url": 42}, "url is required and must be a string, not a number"),
    ({"url": ""}, "url is required"),
    ({"url": "file:///etc/passwd"}, "must be an absolute http:// or https:// URL"),
    ({"url": "ftp://example.com/file"}, "must be an absolute http:// or https:// URL"),
    ({"url": "not a url"}, "must be an absolute http:// or https:// URL"),
    ({"url": "http://"}, "must be an absolute http:// or https:// URL"),
    ({"url": "//example.com/x"}, "must be an absolute http:// or https:// URL"),
    ({"url": "/relative/path"}, "must be an absolute http:// or https:// URL"),
    ({"url": "http://exa mple.com/"}, "whitespace or control characters"),
    ({"url": "http://example.com/\r\nHost: evil"}, "whitespace or control characters"),
    ({"url": "http://example.com:99999/"}, "port 99999 is out of range"),
    ({"url": "http://h/", "method": "TRACE"}, "method 'TRACE' is not one of GET, HEAD, POST"),
    ({"url": "http://h/", "method": 1}, "method 1 is not one of"),
    ({"url": "http://h/", "headers": ["X: 1"]}, "headers must be an object of strings, not an array"),
    (
        {"url": "http://h/", "headers": {"X-Count": 1}},
        "header 'X-Count' must have a string value, not a number",
    ),
    ({"url": "http://h/", "headers": {"X-A": None}}, "header 'X-A' must have a string value, not null"),
    ({"url": "http://h/", "headers": {"X-A": "1\r\nX-Injected: 2"}}, "must not contain CR or LF"),
    ({"url": "http://h/", "headers": {"X-A": "line\n"}}, "must not contain CR or LF"),
    ({"url": "http://h/", "headers": {"X-A\r\nX-B": "1"}}, "is not a valid HTTP header name"),
    ({"url": "http://h/", "headers": {"X A": "1"}}, "is not a valid HTTP header name"),
    ({"url": "http://h/", "headers": {"X-A": "caf\u00e9"}}, "must be printable ASCII"),
    ({"url": "http://h/", "headers": {"Idempotency-Key": "mine"}}, "set by waystation from the task's"),
    ({"url": "http://h/", "headers": {"idempotency-key": "mine"}}, "cannot be given"),
    ({"url": "http://h/", "headers": {"User-Agent": "curl/8"}}, "cannot be given"),
    ({"url": "http://h/", "headers": {"Content-Length": "3"}}, "computed from the body"),
    ({"url": "http://h/", "headers": {"X-A": "1", "x-a": "2"}}, "is given twice"),
    ({"url": "http://h/", "body": "a", "json": {"a": 1}}, "give body or json, not both"),
    ({"url": "http://h/", "body": {"a": 1}}, "body must be a string, not an object (use json"),
    ({"url": "http://h/", "json": float("nan")}, "json must be a JSON value"),
    ({"url": "http://h/", "json": {"when": object()}}, "json must be a JSON value"),
    ({"url": "http://h/", "body": "x" * (MAX_REQUEST_BODY_BYTES + 1)}, "body is 1048577 bytes; the limit is"),
    ({"url": "http://h/", "body": "é" * (MAX_REQUEST_BODY_BYTES // 2 + 1)}, "body is 1048578 bytes"),
    ({"url": "http://h/", "json": ["x" * MAX_REQUEST_BODY_BYTES]}, "json is 1048580 bytes; the limit is"),
    ({"url": "http://h/", "verb": "GET", "data": 1}, "unknown argument(s) data, verb; http_request takes"),
]


@pytest.mark.parametrize(("args", "message"), BAD_HTTP_ARGS)
def test_http_request_rejects_bad_args(args: object, message: str) -> None:
    with pytest.raises(InvalidArguments) as caught:
        HTTP.validate(args)
    assert caught.value.tool == "http_request"
    assert message in str(caught.value)
    assert str(caught.value).startswith("http_request: ")


def test_a_body_at_the_limit_is_accepted() -> None:
    assert HTTP.validate({"url": "http://h/", "body": "x" * MAX_REQUEST_BODY_BYTES})["body"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"url": "http://h/", "method": "POST"}, "unknown argument(s) method; web_fetch takes url"),
        ({"url": "file:///etc/passwd"}, "must be an absolute http:// or https:// URL"),
        ({}, "url is required"),
        (None, "arguments must be a JSON object, not null"),
    ],
)
def test_web_fetch_rejects_bad_args(args: object, message: str) -> None:
    with pytest.raises(InvalidArguments) as caught:
        FETCH.validate(args)
    assert caught.value.tool == "web_fetch"
    assert message in str(caught.value)


def test_registry() -> None:
    registry = default_tools()
    assert registry.names() == ["http_request", "web_fetch"]
    assert registry.get("http_request").name == "http_request"
    assert [tool.name for tool in registry] == ["http_request", "web_fetch"]
    assert all(tool.needs_network for tool in registry)
    assert all(tool.parameters["type"] == "object" for tool in registry)
    with pytest.raises(UnknownTool) as caught:
        registry.get("shell")
    assert caught.value.tool == "shell"
    assert "unknown tool 'shell'" in str(caught.value)
    assert "http_request, web_fetch" in str(caught.value)
    with pytest.raises(ValueError, match="two tools are named 'web_fetch'"):
        ToolRegistry([WebFetchTool(), WebFetchTool()])


@pytest.mark.parametrize(
    ("target", "host"),
    [
        ("http://Example.COM:8080/x", "example.com:8080"),
        ("https://example.com/", "example.com"),
        ("https://example.com:443/", "example.com"),
        ("http://user:pw@10.0.0.1:81/", "10.0.0.1:81"),
        ("http://[::1]:9000/", "[::1]:9000"),
    ],
)
def test_destination_host(target: str, host: str) -> None:
    assert HTTP.destination_host(HTTP.validate({"url": target})) == host
    assert FETCH.destination_host(FETCH.validate({"url": target})) == host


# --- delivery ------------------------------------------------------------------------------------


async def test_get_carries_the_idempotency_key_and_user_agent(
    server: TestServer, client: DeliveryClient
) -> None:
    args = HTTP.validate({"url": url(server, "/echo?q=1"), "headers": {"X-Trace": "t1"}})
    result = await HTTP.deliver(client, args, KEY, 5.0)
    seen = await echoed(result)
    assert seen["method"] == "GET"
    assert seen["headers"]["idempotency-key"] == KEY
    assert seen["headers"]["user-agent"] == f"waystation/{__version__}"
    assert seen["headers"]["x-trace"] == "t1"
    assert result.headers == {"content-type": "application/json; charset=utf-8"}
    assert result.truncated is False
    assert result.retry_after_s is None
    assert result.duration_ms >= 0


async def test_a_compressed_answer_is_decoded(server: TestServer, client: DeliveryClient) -> None:
    """Only encodings httpx can decode are offered; the stored body is the decoded text."""
    seen = await echoed(await FETCH.deliver(client, {"url": url(server, "/echo")}, KEY, 5.0))
    offered = {e.strip() for e in seen["headers"]["accept-encoding"].split(",")}
    assert offered <= {"gzip", "deflate", "identity"}, offered
    result = await FETCH.deliver(client, {"url": url(server, "/gzipped")}, KEY, 5.0)
    assert (result.status, result.body, result.truncated) == (200, "squeezed " * 200, False)


async def test_post_json(server: TestServer, client: DeliveryClient) -> None:
    payload = {"name": "café", "n": [1, 2]}
    args = HTTP.validate({"method": "POST", "url": url(server, "/echo"), "json": payload})
    seen = await echoed(await HTTP.deliver(client, args, KEY, 5.0))
    assert seen["method"] == "POST"
    assert seen["headers"]["idempotency-key"] == KEY
    assert seen["headers"]["content-type"] == "application/json"
    assert json.loads(seen["body"]) == payload


async def test_put_body_keeps_the_callers_content_type(server: TestServer, client: DeliveryClient) -> None:
    args = HTTP.validate(
        {
            "method": "put",
            "url": url(server, "/echo"),
            "body": "hello\nworld",
            "headers": {"Content-Type": "text/csv"},
        }
    )
    seen = await echoed(await HTTP.deliver(client, args, "other-key", 5.0))
    assert seen["method"] == "PUT"
    assert seen["body"] == "hello\nworld"
    assert seen["headers"]["content-type"] == "text/csv"
    assert seen["headers"]["idempotency-key"] == "other-key"


async def test_web_fetch_gets_with_the_key(server: TestServer, client: DeliveryClient) -> None:
    seen = await echoed(await FETCH.deliver(client, FETCH.validate({"url": url(server, "/echo")}), KEY, 5.0))
    assert seen["method"] == "GET"
    assert seen["headers"]["idempotency-key"] == KEY


async def test_retry_after_delta_seconds(server: TestServer, client: DeliveryClient) -> None:
    result = await FETCH.deliver(client, {"url": url(server, "/retry-delta")}, KEY, 5.0)
    assert (result.status, result.body, result.retry_after_s) == (503, "busy", 7.0)
    assert result.headers["retry-after"] == "7"


async def test_retry_after_http_date(server: TestServer, client: DeliveryClient) -> None:
    result = await FETCH.deliver(client, {"url": url(server, "/retry-date")}, KEY, 5.0)
    assert result.status == 429
    assert result.retry_after_s is not None
    assert 115 <= result.retry_after_s <= 121  # an HTTP-date has whole seconds


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert timeutil.retry_after_seconds(None, now) is None
    assert timeutil.retry_after_seconds("", now) is None
    assert timeutil.retry_after_seconds("soon", now) is None
    assert timeutil.retry_after_seconds("-5", now) is None
    assert timeutil.retry_after_seconds("nan", now) is None
    assert timeutil.retry_after_seconds(" 120 ", now) == 120.0
    assert timeutil.retry_after_seconds("0", now) == 0.0
    assert timeutil.retry_after_seconds("Thu, 01 Jan 2026 12:01:30 GMT", now) == 90.0
    assert timeutil.retry_after_seconds("Thu, 01 Jan 2026 12:01:30 -0000", now) == 90.0
    assert timeutil.retry_after_seconds("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0  # in the past: now


async def test_large_response_is_truncated(server: TestServer, client: DeliveryClient) -> None:
    result = await FETCH.deliver(client, {"url": url(server, "/big")}, KEY, 5.0)
    assert result.status == 200
    assert result.truncated is True
    assert result.body == "x" * MAX_RESULT_BYTES


async def test_truncation_drops_a_split_character(server: TestServer, client: DeliveryClient) -> None:
    result = await FETCH.deliver(client, {"url": url(server, "/split-char")}, KEY, 5.0)
    assert result.truncated is True
    assert result.body == "a" + "é" * ((MAX_RESULT_BYTES - 1) // 2)
    assert "\ufffd" not in result.body


async def test_a_fetch_follows_a_redirect(server: TestServer, client: DeliveryClient) -> None:
    result = await FETCH.deliver(client, {"url": url(server, "/redirect")}, KEY, 5.0)
    assert result.status == 200
    assert json.loads(result.body)["path"] == "/echo"


def test_which_redirects_are_followed_and_what_they_carry() -> None:
    def follow(method: str, status: int, location: str, **headers: str) -> httpx.Request | None:
        request = httpx.Request(
            method, "http://a.example/x", headers=headers, content=b"b" if method == "POST" else None
        )
        return redirected(request, httpx.Response(status, headers={"location": location}))

    assert follow("GET", 301, "/y").url == "http://a.example/y"  # type: ignore[union-attr]
    assert follow("POST", 302, "/y") is None
    assert follow("POST", 308, "/y").content == b"b"  # type: ignore[union-attr]
    after = follow("POST", 303, "/y", **{"content-type": "text/plain"})
    assert after is not None and (after.method, after.content, "content-type" in after.headers) == (
        "GET",
        b"",
        False,
    )
    assert follow("GET", 301, "ftp://a.example/") is None
    assert follow("GET", 200, "/y") is None
    kept = {"idempotency-key": "k", "authorization": "Bearer t", "x-api-key": "s", "accept": "a/b"}
    upgraded = follow("GET", 301, "https://a.example/y", **kept)
    assert upgraded is not None and upgraded.headers["idempotency-key"] == "k"  # the same site, upgraded
    away = follow("GET", 302, "http://b.example/y", **kept)
    assert away is not None and {k for k in away.headers if k in kept} == {"accept"}


async def test_cookies_and_auth_headers_are_not_kept(server: TestServer, client: DeliveryClient) -> None:
    result = await FETCH.deliver(client, {"url": url(server, "/cookie")}, KEY, 5.0)
    assert result.status == 200
    assert result.headers == {"content-type": "text/plain; charset=utf-8", "etag": '"v1"'}
    assert "s3cr3t" not in json.dumps(result.to_json())


async def test_a_cookie_set_by_one_delivery_is_not_sent_with_the_next(
    server: TestServer, client: DeliveryClient
) -> None:
    await FETCH.deliver(client, {"url": url(server, "/cookie")}, KEY, 5.0)
    seen = await echoed(await FETCH.deliver(client, {"url": url(server, "/echo")}, KEY, 5.0))
    assert "cookie" not in seen["headers"], seen["headers"]


async def test_a_proxy_from_the_environment_carries_the_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    """With HTTP_PROXY set, deliveries go through it (NO_PROXY aside), still without cookies."""
    heads: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nSet-Cookie: session=s3cr3t\r\n"
            b"Connection: close\r\n\r\nproxied"
        )
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    try:
        async with new_client() as proxied_client:
            results = [
                await FETCH.deliver(proxied_client, {"url": "http://destination.example/page"}, KEY, 5.0)
                for _ in range(2)
            ]
    finally:
        listener.close()
        await listener.wait_closed()
    assert [(r.status, r.body) for r in results] == [(200, "proxied")] * 2
    assert [h.split(b"\r\n", 1)[0] for h in heads] == [b"GET http://destination.example/page HTTP/1.1"] * 2
    assert b"cookie:" not in heads[1].lower(), heads[1]


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """An HTTPS destination with a certificate from a throwaway CA; yields its URL and the CA file."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="over tls")

    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"https://127.0.0.1:{port}/hello", ca_file
    finally:
        await runner.cleanup()


async def test_tls_is_verified_against_httpxs_roots_or_ssl_cert_file(
    tls_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deliveries trust what httpx would: not a CA nobody configured, but SSL_CERT_FILE when set."""
    target, ca_file = tls_server
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    async with new_client() as untrusting:
        with pytest.raises(NetworkUnreachable, match=r"127\.0\.0\.1"):
            await FETCH.deliver(untrusting, {"url": target}, KEY, 5.0)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    async with new_client() as trusting:
        result = await FETCH.deliver(trusting, {"url": target}, KEY, 5.0)
    assert (result.status, result.body) == (200, "over tls")


async def test_closed_port_is_unreachable(client: DeliveryClient) -> None:
    port = closed_port()
    with pytest.raises(NetworkUnreachable) as caught:
        await FETCH.deliver(client, {"url": f"http://127.0.0.1:{port}/x"}, KEY, 5.0)
    # Said as what it is (this text is the task's last_error): refused, not a timeout.
    assert str(caught.value).startswith(f"127.0.0.1:{port}: ConnectError: Cannot connect to host")
    assert "no answer within" not in str(caught.value)


async def test_unresolvable_host_is_unreachable(client: DeliveryClient) -> None:
    with pytest.raises(NetworkUnreachable) as caught:  # .invalid never resolves (RFC 6761)
        await FETCH.deliver(client, {"url": "http://waystation-test.invalid/"}, KEY, 5.0)
    assert str(caught.value).startswith("waystation-test.invalid: ConnectError: ")


async def test_no_answer_within_the_timeout_is_unreachable(
    server: TestServer, client: DeliveryClient
) -> None:
    started = time.monotonic()
    with pytest.raises(NetworkUnreachable, match=r"no answer within 0\.3s"):
        await FETCH.deliver(client, {"url": url(server, "/hang")}, KEY, 0.3)
    assert time.monotonic() - started < 3


async def test_a_connection_closed_without_an_answer_is_unreachable(client: DeliveryClient) -> None:
    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()
        await writer.wait_closed()

    listener = await asyncio.start_server(slam, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        with pytest.raises(NetworkUnreachable):
            await FETCH.deliver(client, {"url": f"http://127.0.0.1:{port}/"}, KEY, 5.0)
    finally:
        listener.close()
        await listener.wait_closed()


async def test_a_body_cut_short_after_the_status_is_still_the_answer(
    server: TestServer, client: DeliveryClient
) -> None:
    # The destination said 201: re-delivering as if it had not answered would repeat the effect.
    result = await FETCH.deliver(client, {"url": url(server, "/stall-body")}, KEY, 0.5)
    assert result.status == 201
    assert result.body == "partial "
    assert result.truncated is True


def test_delivery_result_json_round_trip() -> None:
    result = DeliveryResult(
        status=429,
        headers={"content-type": "text/plain", "retry-after": "3"},
        body="slow down é",
        truncated=False,
        retry_after_s=3.0,
        duration_ms=12,
    )
    assert DeliveryResult.from_json(json.loads(json.dumps(result.to_json()))) == result
    plain = DeliveryResult(status=200, headers={}, body="", truncated=True, retry_after_s=None, duration_ms=0)
    assert DeliveryResult.from_json(plain.to_json()) == plain
    assert DeliveryResult.from_json({**plain.to_json(), "retry_after_s": 2}).retry_after_s == 2.0
    for broken in ({"status": "200"}, {"headers": {"a": 1}}, {"truncated": 1}, {"duration_ms": None}):
        with pytest.raises(ValueError, match="delivery result"):
            DeliveryResult.from_json({**plain.to_json(), **broken})
