"""Where a model's call may connect (issue 20, item 7): a redirect, or a URL that only a tool result
named, never reaches a loopback, link-local or private address unless `[tools] allow_hosts` lists
the host; the user's own URLs stay callable. Checked on every hop, where it connects, against
real HTTP servers on 127.0.0.1 and 127.0.0.2 (both loopback on Linux). Also: a redirect to another
origin (RFC 6454: scheme, host and port) carries no credentials.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiohttp import web

from waystation.adapters.models.base import ToolCall
from waystation.adapters.routes import Router
from waystation.adapters.routes.local import LocalRoute
from waystation.adapters.tools import default_tools, new_client
from waystation.adapters.tools.reach import REACH, USER_NAMED, public_only
from waystation.adapters.tools.redirects import redirected
from waystation.addresses import address_kind, is_public
from waystation.config import ModelSettings, QueueSettings
from waystation.db import Database
from waystation.errors import DestinationRefused
from waystation.ports import Outcome
from waystation.queue.store import TaskStore
from waystation.station.delivery import Deliveries
from waystation.station.turns.engine import TurnEngine
from waystation.station.turns.request import TurnRequest
from waystation.testing import FakeConnectivity, RecordingAnnouncer, ScriptedBackend

CREDENTIALS = "aws_secret_access_key=INTERNAL-0123456789"


# --- the classification, alone ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.2", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped: what the IPv4 address is
        ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
        ("169.254.169.254", "link-local"),  # the cloud metadata address
        ("64:ff9b::a9fe:a9fe", "link-local"),  # the same through NAT64
        ("fe80::1%eth0", "link-local"),
        ("10.1.2.3", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("100.100.100.100", "special-purpose"),  # carrier-grade NAT space (Tailscale's)
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "private"),  # reserved, and Python counts it private first
        ("8.8.8.8", "public"),
        ("2001:4860:4860::8888", "public"),
        ("64:ff9b::808:808", "public"),  # 8.8.8.8 through NAT64: an IPv6-only network's internet
    ],
)
def test_addresses_are_classified_as_an_egress_proxy_does(address: str, kind: str) -> None:
    assert address_kind(address) == kind
    assert is_public(address) == (kind == "public")


def test_which_hops_are_held_to_public_addresses() -> None:
    url = "http://127.0.0.2:8080/x"
    page = "http://127.0.0.1:8080/page"
    assert not public_only(None, url, (), page)  # a task of the user's own goes where it says
    assert not public_only(USER_NAMED, url, ())  # the URL the user gave
    assert public_only(USER_NAMED, url, (), page)  # ... but not another origin it redirects to
    assert not public_only(USER_NAMED, "http://127.0.0.1:8080/login", (), page)  # its own origin: yes
    assert public_only(USER_NAMED, "http://127.0.0.1:8081/login", (), page)  # another port: no
    assert public_only("public", url, ())  # a URL only a tool result named
    assert public_only("public", page, (), page)  # ... on every hop
    assert public_only("something else", url, ())  # unknown: held, never let through
    assert not public_only("public", url, ("127.0.0.2",), page)  # an allowed host, on any hop


def test_a_redirect_to_another_port_or_scheme_keeps_no_credentials() -> None:
    """RFC 6454: the port is part of the origin. Before, https:// to the same host kept them on
    any port, and so did http:// to https:// on another port."""

    def carried(source: str, location: str) -> set[str]:
        headers = {"authorization": "Bearer t", "cookie": "s=1", "idempotency-key": "k", "accept": "a/b"}
        request = httpx.Request("GET", source, headers=headers)
        follow = redirected(request, httpx.Response(302, headers={"location": location}))
        assert follow is not None
        return {k for k in follow.headers if k in headers}

    everything = {"authorization", "cookie", "idempotency-key", "accept"}
    assert carried("https://a.example/x", "https://a.example/y") == everything
    assert carried("https://a.example/x", "https://a.example:443/y") == everything  # the default port
    assert carried("http://a.example/x", "https://a.example/y") == everything  # upgraded, 80 to 443
    assert carried("https://a.example/x", "https://a.example:8443/y") == {"accept"}
    assert carried("http://a.example:8080/x", "https://a.example:8443/y") == {"accept"}
    assert carried("http://a.example/x", "https://a.example:8443/y") == {"accept"}
    assert carried("https://a.example/x", "http://a.example/y") == {"accept"}  # a downgrade


# --- real servers ------------------------------------------------------------------------------------


@dataclass
class Server:
    base: str
    hits: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


async def serve(app: web.Application, host: str, ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, 0, ssl_context=ssl_context).start()
    return runner


def recording(server: Server, answer: Callable[[web.Request], web.StreamResponse]) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        server.hits.append(request.path)
        server.headers.append({k.lower(): v for k, v in request.headers.items()})
        return answer(request)

    return handle


@pytest.fixture
async def internal() -> AsyncIterator[Server]:
    """A service on 127.0.0.2 that answers with credentials (a metadata service stands so)."""
    server = Server("")
    app = web.Application()
    app.router.add_get("/{tail:.*}", recording(server, lambda _: web.Response(text=CREDENTIALS)))
    runner = await serve(app, "127.0.0.2")
    server.base = f"http://127.0.0.2:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


@pytest.fixture
async def named(internal: Server) -> AsyncIterator[Server]:
    """The page the user names, on 127.0.0.1: /moved redirects to the internal service, /links
    names it (by address and by a name that resolves to loopback), /internal is its own."""
    server = Server("")

    def answer(request: web.Request) -> web.Response:
        if request.path == "/moved":
            raise web.HTTPFound(internal.url("/internal/creds"))
        if request.path == "/login":  # within its own origin, as a local app's sign-in page
            raise web.HTTPFound("/home")
        if request.path == "/links":
            port = request.url.port
            text = f"See {internal.url('/internal/creds')} and http://localhost:{port}/internal/creds"
            return web.Response(text=text)
        return web.Response(text=CREDENTIALS if request.path.startswith("/internal") else "a page")

    app = web.Application()
    app.router.add_get("/{tail:.*}", recording(server, answer))
    runner = await serve(app, "127.0.0.1")
    server.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


def engine(
    db: Database,
    connectivity: FakeConnectivity,
    model: ScriptedBackend,
    client: Any,
    allow_hosts: tuple[str, ...] = (),
) -> TurnEngine:
    """The engine on the real router and tools, its tools' allow_hosts as the config's."""
    path = db.path.parent / "scripted.gguf"
    path.write_bytes(b"GGUF")  # never loaded: the scripted backend stands in for it
    local = LocalRoute(ModelSettings(path=str(path)), {str(path): model})
    router = Router(local, "local", connectivity=connectivity, env={})
    tools = default_tools(allow_hosts=allow_hosts)
    deliver = Deliveries(tools, client, 10.0)
    store = TaskStore(db, QueueSettings())
    return TurnEngine(
        db, store, tools, connectivity, deliver, router.resolve, RecordingAnnouncer(), allow_hosts=allow_hosts
    )


def fetch(url: str, call_id: str = "call_1") -> ToolCall:
    return ToolCall(call_id, "http_request", {"url": url})


def told(model: ScriptedBackend, step: int = 1) -> str:
    """What the model was told of its last call before step `step`."""
    return str(model.requests[step].messages[-1]["content"])


async def test_a_redirect_from_the_users_page_to_loopback_is_not_followed(
    db: Database, named: Server, internal: Server
) -> None:
    """The issue's case: a named page 302 to 127.0.0.2/internal/... was fetched and its
    "credentials" kept in the turn."""
    online = FakeConnectivity(state="online")
    model = ScriptedBackend([fetch(named.url("/moved")), "Nothing there."])
    async with new_client() as client:
        result = await engine(db, online, model, client).run(TurnRequest(f"Read {named.url('/moved')}"))
    assert named.hits == ["/moved"]  # the user's own URL, on loopback, is still called
    assert internal.hits == []  # ... its redirect to 127.0.0.2 is not
    assert "127.0.0.2 is loopback, not a public address" in told(model)
    assert "[tools] allow_hosts" in told(model)
    assert CREDENTIALS not in json.dumps(result.to_json()) and CREDENTIALS not in told(model)


async def test_a_redirect_within_the_users_own_origin_is_followed(db: Database, named: Server) -> None:
    """The user named that origin (here on loopback): its own redirects stay callable."""
    online = FakeConnectivity(state="online")
    model = ScriptedBackend([fetch(named.url("/login")), "It says: a page."])
    async with new_client() as client:
        result = await engine(db, online, model, client).run(TurnRequest(f"Read {named.url('/login')}"))
    assert named.hits == ["/login", "/home"]
    assert [c["status"] for c in result.tool_calls] == ["done"] and "a page" in told(model)


async def test_a_url_only_a_fetched_page_names_may_not_reach_loopback(
    db: Database, named: Server, internal: Server
) -> None:
    """The page names the internal service by address (refused when the call is made, never
    parked) and by a name resolving to loopback (refused where it connects)."""
    online = FakeConnectivity(state="online")
    by_address = internal.url("/internal/creds")
    by_name = named.url("/internal/creds").replace("127.0.0.1", "localhost")
    model = ScriptedBackend(
        [fetch(named.url("/links")), fetch(by_address, "call_2"), fetch(by_name, "call_3"), "Nothing."]
    )
    async with new_client() as client:
        result = await engine(db, online, model, client).run(
            TurnRequest(f"What links are on {named.url('/links')}?")
        )
    assert by_address in told(model) and by_name in told(model)  # the page named both
    assert internal.hits == [] and named.hits == ["/links"]
    statuses = [c["status"] for c in result.tool_calls]
    assert statuses == ["done", "refused", "error"]
    assert "127.0.0.2 is loopback, not a public address" in told(model, 2)
    assert "localhost (127.0.0.1) is loopback, not a public address" in told(model, 3)
    assert result.deferred_task_ids == []


async def test_allow_hosts_lets_a_redirect_reach_a_listed_private_host(
    db: Database, named: Server, internal: Server
) -> None:
    online = FakeConnectivity(state="online")
    model = ScriptedBackend([fetch(named.url("/moved")), "Found it."])
    async with new_client() as client:
        await engine(db, online, model, client, allow_hosts=("127.0.0.2",)).run(
            TurnRequest(f"Read {named.url('/moved')}")
        )
    assert internal.hits == ["/internal/creds"]
    assert CREDENTIALS in told(model)


async def test_a_parked_call_is_held_to_its_reach_when_it_is_delivered(
    db: Database, named: Server, internal: Server
) -> None:
    """Parked offline, the call keeps its reach: the flusher's delivery refuses the redirect too
    (dead at once: no later try could reach it), while a task of the user's own follows it."""
    model = ScriptedBackend([fetch(named.url("/moved"))])
    async with new_client() as client:
        turns = engine(db, FakeConnectivity(state="offline"), model, client)
        result = await turns.run(TurnRequest(f"Read {named.url('/moved')}"))
        (task_id,) = result.deferred_task_ids
        task = await TaskStore(db, QueueSettings()).get(task_id)
        assert task.args[REACH] == USER_NAMED
        deliveries = Deliveries(default_tools(), client, 10.0)
        sent = await deliveries(task.tool, task.args, task.idempotency_key)
        assert sent.outcome == Outcome.DEAD and sent.error is not None
        assert "127.0.0.2 is loopback, not a public address" in sent.error
        assert internal.hits == []
        users_own = {k: v for k, v in task.args.items() if k != REACH}
        answered = await deliveries(task.tool, users_own, "key-users-own")
    assert answered.outcome == Outcome.DONE and internal.hits == ["/internal/creds"]


async def test_credentials_do_not_follow_a_redirect_to_another_port(
    named: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """http://127.0.0.1:P to https://127.0.0.1:Q is another origin: its Authorization, Cookie and
    secret-ref headers stay behind (before, any move to https on the same host kept them)."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    landed = Server("")
    app = web.Application()
    app.router.add_get("/{tail:.*}", recording(landed, lambda _: web.Response(text="landed")))
    runner = await serve(app, "127.0.0.1", context)
    target = f"https://127.0.0.1:{runner.addresses[0][1]}/land"

    async def go(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(target)

    hop = web.Application()
    hop.router.add_get("/go", go)
    start = await serve(hop, "127.0.0.1")
    http = default_tools().get("http_request")
    headers = {"Authorization": "Bearer t0ken-0123456789", "Cookie": "s=1", "Accept": "a/b"}
    args = http.validate({"url": f"http://127.0.0.1:{start.addresses[0][1]}/go", "headers": headers})
    try:
        async with new_client() as client:
            answer = await http.deliver(client, args, "key-1", 10.0)
    finally:
        await start.cleanup()
        await runner.cleanup()
    assert (answer.status, answer.body) == (200, "landed")
    (seen,) = landed.headers
    assert seen["accept"] == "a/b"
    assert not {"authorization", "cookie", "idempotency-key"} & set(seen)


async def test_through_a_proxy_a_name_resolving_to_loopback_is_refused_before_sending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With HTTP_PROXY set the proxy connects, not us: the name is resolved and checked first."""
    heads: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(proxy, "127.0.0.1", 0)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}")
    fetch_tool = default_tools().get("web_fetch")
    try:
        async with new_client() as client:
            with pytest.raises(DestinationRefused, match=r"localhost \((127\.0\.0\.1|::1)\) is loopback"):
                await fetch_tool.deliver(client, {"url": "http://localhost/x", REACH: "public"}, "k", 5.0)
            answer = await fetch_tool.deliver(client, {"url": "http://localhost/x"}, "k", 5.0)
    finally:
        listener.close()
        await listener.wait_closed()
    assert answer.status == 200 and len(heads) == 1  # the user's own task still goes through it
