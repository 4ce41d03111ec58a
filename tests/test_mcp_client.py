"""The MCP client with real servers (the official SDK on both sides): `[mcp.servers]` checked at
load; `waystation mcp add|ls|rm|import` on a config file; a stdio server's tool called by a turn
at once, also offline; a remote (Streamable HTTP) server's tool offered offline from the listing
kept in the database, parked as an `mcp` task, delivered when online as exactly one `tools/call`
carrying the task's Idempotency-Key, and the turn resumed with its result."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.mcp_servers import RemoteServer, remote_server
from typer.testing import CliRunner

from waystation.adapters.mcp import McpCallTool
from waystation.adapters.models.base import ToolCall
from waystation.adapters.models.scripted import ScriptedBackend
from waystation.adapters.routes import Router
from waystation.adapters.routes.local import LocalRoute
from waystation.adapters.tools import ToolRegistry, default_tools, new_client
from waystation.config import McpServerSettings, ModelSettings, Paths, QueueSettings
from waystation.config_load import load_settings
from waystation.db import Database
from waystation.errors import ConfigError
from waystation.queue.flusher import Flusher
from waystation.queue.policy import TaskState
from waystation.queue.store import TaskStore
from waystation.station.announce import Announcer
from waystation.station.delivery import Deliveries
from waystation.station.events import EventBus
from waystation.station.mcp_catalog import McpCatalog
from waystation.station.metrics import Metrics
from waystation.station.turns.engine import TurnEngine
from waystation.station.turns.request import TurnRequest
from waystation.testing import FakeConnectivity, until

STDIO_SERVER = McpServerSettings(
    command=sys.executable, args=(str(Path(__file__).parent / "support" / "mcp_servers.py"),)
)


def paths_in(home: Path) -> Paths:
    return Paths(home / "config.toml", home / "waystation.db", home / "waystation.sock", home / "logs")


# --- configuration ----------------------------------------------------------------------------------


def test_servers_are_read_from_the_config_file(tmp_path: Path) -> None:
    paths = paths_in(tmp_path)
    paths.config_file.write_text(
        """
[mcp.servers.files]
command = "npx"
args = ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"]
env = {DEBUG = "1"}

[mcp.servers.tracker]
url = "https://mcp.example.com/mcp"
headers = {Authorization = {secret = "TRACKER_TOKEN"}, X-Team = "core"}
enabled = false
"""
    )
    servers = load_settings(paths, env={}).mcp_servers
    assert servers["files"] == McpServerSettings(
        command="npx", args=("-y", "@modelcontextprotocol/server-filesystem", "/tmp"), env={"DEBUG": "1"}
    )
    assert not servers["files"].remote
    assert servers["tracker"].remote and not servers["tracker"].enabled
    assert servers["tracker"].headers == {"Authorization": {"secret": "TRACKER_TOKEN"}, "X-Team": "core"}


@pytest.mark.parametrize(
    ("table", "key", "says"),
    [
        ('[mcp.servers.a]\ncommand = "x"\nurl = "https://e/mcp"', "mcp.servers.a", "either command"),
        ("[mcp.servers.a]\nenabled = true", "mcp.servers.a", "either command"),
        ('[mcp.servers.a_b]\ncommand = "x"', "mcp.servers.a_b", "letters, digits or -"),
        ('[mcp.servers.a]\nurl = "ftp://e/mcp"', "mcp.servers.a.url", "http"),
        ('[mcp.servers.a]\ncommand = "x"\nargs = "y"', "mcp.servers.a.args", "list of strings"),
        ('[mcp.servers.a]\nurl = "https://e/"\nheaders = {A = 1}', "mcp.servers.a.headers.A", "secret"),
        ('[mcp.servers.a]\ncommand = "x"\ncwd = "/"', "mcp.servers.a.cwd", "unknown key"),
        ('[mcp.servers.a]\ncommand = "x"\nheaders = {A = "b"}', "mcp.servers.a.headers", "for a url"),
        ("[mcp]\nserver = {}", "mcp.server", "unknown key"),
    ],
)
def test_a_bad_server_table_is_refused_naming_the_key(
    tmp_path: Path, table: str, key: str, says: str
) -> None:
    paths = paths_in(tmp_path)
    paths.config_file.write_text(table + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(paths, env={})
    assert caught.value.key == key
    assert says in caught.value.message


# --- the command line -------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WAYSTATION_HOME", str(tmp_path))
    monkeypatch.delenv("WAYSTATION_SOCKET", raising=False)
    return tmp_path


def cli(*args: str) -> Any:
    from waystation.cli.app import app

    return CliRunner().invoke(app, list(args))


def test_mcp_add_ls_rm_import_round_trip_keeps_the_rest_of_the_file(home: Path) -> None:
    config = home / "config.toml"
    config.write_text('# mine\n[agent]\ndefault_route = "local"  # keep this\n')
    added = cli("mcp", "add", "calc", "--", sys.executable, "-m", "calc", "--verbose")
    assert added.exit_code == 0, added.output
    added = cli(
        "mcp", "add", "tracker", "--url", "https://mcp.example.com/mcp",
        "--header", 'Authorization={"secret": "TRACKER_TOKEN"}', "--header", "X-Team=core",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    text = config.read_text()
    assert text.startswith('# mine\n[agent]\ndefault_route = "local"  # keep this\n')
    servers = load_settings(paths_in(home), env={}).mcp_servers
    assert servers["calc"].command == sys.executable and servers["calc"].args == ("-m", "calc", "--verbose")
    assert servers["tracker"].headers == {"Authorization": {"secret": "TRACKER_TOKEN"}, "X-Team": "core"}

    listed = cli("mcp", "ls", "--json")
    assert listed.exit_code == 0, listed.output
    shown = json.loads(listed.output)
    assert [(s["name"], s["transport"], s["tools"], s["listed_at"]) for s in shown] == [
        ("calc", "stdio", [], None),
        ("tracker", "http", [], None),
    ]
    assert "TRACKER_TOKEN" not in listed.output  # headers are not shown at all

    removed = cli("mcp", "rm", "calc")
    assert removed.exit_code == 0, removed.output
    assert set(load_settings(paths_in(home), env={}).mcp_servers) == {"tracker"}
    assert cli("mcp", "rm", "calc").exit_code == 1

    desktop = home / "claude_desktop_config.json"
    desktop.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "file_system": {"command": "npx", "args": ["-y", "srv"], "env": {"ROOT": "/tmp"}},
                    "linear": {"type": "http", "url": "https://mcp.linear.app/mcp", "headers": {"X-A": "b"}},
                },
                "globalShortcut": "ignored",
            }
        )
    )
    imported = cli("mcp", "import", str(desktop))
    assert imported.exit_code == 0, imported.output
    servers = load_settings(paths_in(home), env={}).mcp_servers
    assert set(servers) == {"tracker", "file-system", "linear"}
    assert (
        servers["file-system"].env == {"ROOT": "/tmp"}
        and servers["linear"].url == "https://mcp.linear.app/mcp"
    )
    assert config.read_text().startswith("# mine\n")


def test_mcp_add_usage_errors(home: Path) -> None:
    assert cli("mcp", "add", "x").exit_code == 2  # neither a command nor a url
    assert cli("mcp", "add", "x", "--url", "https://e/mcp", "--", "cmd").exit_code == 2
    bad = cli("mcp", "add", "bad_name", "--url", "https://e/mcp")
    assert isinstance(bad.exception, ConfigError) and "letters, digits or -" in str(bad.exception)
    assert not (home / "config.toml").exists()


# --- turns ------------------------------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with new_client() as c:
        yield c


@pytest.fixture
def remote() -> Iterator[RemoteServer]:
    with remote_server() as server:
        yield server


def station(
    db: Database, tmp_path: Path, connectivity: FakeConnectivity, client: httpx.AsyncClient, model: Any,
    servers: dict[str, McpServerSettings], announcer: Any = None,
) -> tuple[TurnEngine, McpCatalog, ToolRegistry, Deliveries]:  # fmt: skip
    """The tools and engine as build.py wires them, the local model being `model`."""
    tools = default_tools()
    calls = McpCallTool(servers, None)
    tools.add(calls)
    catalog = McpCatalog(db, tools, calls)
    model_file = tmp_path / "scripted.gguf"
    model_file.write_bytes(b"GGUF")
    local = LocalRoute(ModelSettings(path=str(model_file)), {str(model_file): model})
    router = Router(local, "local", connectivity=connectivity, env={})
    deliveries = Deliveries(tools, client, 30.0)
    announcer = announcer or Announcer(EventBus(), Metrics())
    engine = TurnEngine(
        db, TaskStore(db, QueueSettings()), tools, connectivity, deliveries, router.resolve, announcer
    )
    return engine, catalog, tools, deliveries


async def test_a_stdio_servers_tool_is_called_at_once_also_offline(
    db: Database, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    connectivity = FakeConnectivity(state="offline")
    model = ScriptedBackend([ToolCall("c1", "calc__add", {"a": 2, "b": 3}), "2 + 3 = 5."])
    engine, catalog, _, _ = station(db, tmp_path, connectivity, client, model, {"calc": STDIO_SERVER})
    assert await catalog.refresh(online=False) == {}

    result = await engine.run(TurnRequest("What is 2 + 3? Use the calculator."))

    assert result.status == "ok" and result.text == "2 + 3 = 5."
    assert result.deferred_task_ids == []
    assert "mcp" not in {t.name for t in model.requests[0].tools}  # a task's tool, not a model's
    (offered,) = [t for t in model.requests[0].tools if t.name == "calc__add"]
    assert offered.parameters["required"] == ["a", "b"]  # the server's input schema
    assert result.tool_calls[0]["status"] == "done"
    told = [m for m in model.requests[1].messages if m.get("role") == "tool"]
    assert told[-1]["content"] == "5"
    assert connectivity.network_errors == 0
    row = await db.fetchone("SELECT COUNT(*) FROM tasks")
    assert row is not None and row[0] == 0


async def test_a_remote_call_parks_offline_and_is_delivered_once_with_its_key(
    db: Database, tmp_path: Path, client: httpx.AsyncClient, remote: RemoteServer
) -> None:
    servers = {"tracker": McpServerSettings(url=remote.url)}
    connectivity = FakeConnectivity(state="online")
    _, listing, _, _ = station(db, tmp_path, connectivity, client, ScriptedBackend([]), servers)
    assert await listing.refresh(online=True) == {}  # listed while online: kept in the database

    # A restart, offline: the tools are offered from what the database kept.
    connectivity.state = "offline"
    announcer = Announcer(EventBus(), Metrics())
    model = ScriptedBackend(
        [ToolCall("c1", "tracker__open_ticket", {"title": "Printer on fire"}), "Ticket 42 opened."]
    )
    engine, catalog, tools, deliveries = station(
        db, tmp_path, connectivity, client, model, servers, announcer
    )
    await catalog.load()
    await catalog.refresh(online=False)  # a remote server is not listed while offline
    assert "tracker__open_ticket" in tools.names()
    remote.requests.clear()

    parked = await engine.run(TurnRequest("Open a ticket: Printer on fire"))

    assert parked.status == "parked"
    (task_id,) = parked.deferred_task_ids
    store = TaskStore(db, QueueSettings())
    task = await store.get(task_id)
    assert task.tool == "mcp"
    assert task.args == {
        "server": "tracker",
        "tool": "open_ticket",
        "arguments": {"title": "Printer on fire"},
    }
    assert remote.requests == []  # nothing left the host

    connectivity.state = "online"
    flusher = Flusher(store, deliveries, connectivity, QueueSettings(), announcer, rng=random.Random(1))
    announcer.listen("task", flusher.task_changed)
    flushing = asyncio.create_task(flusher.run())
    try:
        flusher.connectivity_changed("online")
        await until(lambda: len(remote.calls()) == 1, within=20.0)
        await until(lambda: flusher.in_flight == 0, within=10.0)
        done = await store.get(task_id)
    finally:
        flushing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flushing
    assert remote.calls() == [task.idempotency_key]
    assert done.state == TaskState.DONE
    assert done.result is not None
    assert done.result["structuredContent"] == {"number": 42, "title": "Printer on fire"}
    assert done.result["isError"] is False
    assert done.result["content"][0]["type"] == "text"

    resumed = await engine.resume(parked.turn_id)
    assert resumed is not None and resumed.status == "ok" and resumed.text == "Ticket 42 opened."
    told = [m for m in model.requests[-1].messages if m.get("role") == "tool"]
    assert '"number": 42' in told[-1]["content"]
    assert remote.calls() == [task.idempotency_key]  # resuming sent nothing again


async def test_a_task_of_tool_mcp_is_validated_against_the_configured_servers() -> None:
    calls = McpCallTool({"tracker": McpServerSettings(url="https://e.example/mcp")}, None)
    args = calls.validate({"server": "tracker", "tool": "open_ticket", "arguments": {"title": "x"}})
    assert args == {"server": "tracker", "tool": "open_ticket", "arguments": {"title": "x"}}
    assert calls.destination_host(args) == "e.example"
    from waystation.errors import InvalidArguments

    with pytest.raises(InvalidArguments, match="not an enabled"):
        calls.validate({"server": "nope", "tool": "t"})
    with pytest.raises(InvalidArguments, match="object"):
        calls.validate({"server": "tracker", "tool": "t", "arguments": [1]})


# --- the agent ----------------------------------------------------------------------------------


def test_the_agent_lists_servers_at_start_and_delivers_a_posted_mcp_task(
    agent_factory: Any, remote: RemoteServer
) -> None:
    """A real agent: both servers listed at start (`mcp ls` shows their tools), and `POST
    /v1/tasks` with tool `mcp` delivered as one tools/call carrying the task's key."""
    import os
    import subprocess
    import time

    from support.agentproc import agent_env

    agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "online"})
    (agent.home / "config.toml").write_text(
        f"""
[mcp.servers.calc]
command = {json.dumps(STDIO_SERVER.command)}
args = {json.dumps(list(STDIO_SERVER.args))}

[mcp.servers.tracker]
url = "{remote.url}"
"""
    )
    agent.start()

    def listed() -> list[dict[str, Any]]:
        shown = subprocess.run(
            [sys.executable, "-m", "waystation", "mcp", "ls", "--json"],
            env={**agent_env(agent.home), "PYTHONPATH": os.getcwd()},
            capture_output=True,
            text=True,
            check=True,
        )
        servers: list[dict[str, Any]] = json.loads(shown.stdout)
        return servers

    deadline = time.monotonic() + 30
    while not all(s["listed_at"] for s in listed()):
        assert time.monotonic() < deadline, listed()
        time.sleep(0.2)
    assert {s["name"]: [t["name"] for t in s["tools"]] for s in listed()} == {
        "calc": ["calc__add", "calc__nap"],
        "tracker": ["tracker__open_ticket"],
    }

    remote.requests.clear()
    with agent.client() as client:
        body = {
            "tool": "mcp",
            "args": {"server": "tracker", "tool": "open_ticket", "arguments": {"title": "from the API"}},
            "idempotency_key": "ticket-1",
        }
        posted = client.post("/v1/tasks", json=body)
        assert posted.status_code == 201, posted.text
        task_id = posted.json()["id"]
        deadline = time.monotonic() + 30
        while (task := client.get(f"/v1/tasks/{task_id}").json())["state"] not in ("done", "dead"):
            assert time.monotonic() < deadline, task
            time.sleep(0.1)
    assert task["state"] == "done", task
    assert task["result"]["structuredContent"] == {"number": 42, "title": "from the API"}
    assert task["result"]["isError"] is False
    assert remote.calls() == ["ticket-1"]


# --- delivery edges -----------------------------------------------------------------------------


class OneSecret:
    def resolve(self, name: str) -> str | None:
        return "Bearer s3cret" if name == "TRACKER_TOKEN" else None

    def unset(self, name: str) -> str:
        return f"secret {name} is set nowhere"


async def test_a_header_secret_is_resolved_when_the_call_is_sent(
    client: httpx.AsyncClient, remote: RemoteServer
) -> None:
    server = McpServerSettings(
        url=remote.url, headers={"Authorization": {"secret": "TRACKER_TOKEN"}, "X-Team": "a"}
    )
    calls = McpCallTool({"tracker": server}, OneSecret())
    args = calls.validate({"server": "tracker", "tool": "open_ticket", "arguments": {"title": "t"}})
    answer = await calls.deliver(client, args, "key-7", 20.0)
    assert answer.status == 200 and answer.to_json()["isError"] is False
    (sent,) = [
        h for (method, _), h in zip(remote.requests, remote.headers, strict=True) if method == "tools/call"
    ]
    assert sent["authorization"] == "Bearer s3cret" and sent["x-team"] == "a"
    assert sent["idempotency-key"] == "key-7"

    unset = McpCallTool(
        {"tracker": McpServerSettings(url=remote.url, headers={"A": {"secret": "NOPE"}})}, OneSecret()
    )
    from waystation.errors import InvalidArguments

    with pytest.raises(InvalidArguments, match="NOPE"):  # nothing is sent: the task dies naming it
        await unset.deliver(client, {**args}, "key-8", 20.0)


async def test_a_server_that_hangs_is_timed_out_and_an_unknown_tool_is_the_servers_error(
    client: httpx.AsyncClient,
) -> None:
    from waystation.errors import NetworkUnreachable

    calls = McpCallTool({"calc": STDIO_SERVER}, None)
    started = asyncio.get_running_loop().time()
    with pytest.raises(NetworkUnreachable, match="no answer within 3 s"):
        await calls.deliver(
            client, calls.validate({"server": "calc", "tool": "nap", "arguments": {"seconds": 60}}), "k", 3.0
        )
    assert asyncio.get_running_loop().time() - started < 10

    answer = await calls.deliver(client, calls.validate({"server": "calc", "tool": "nope"}), "k", 20.0)
    assert answer.to_json()["isError"] is True  # the SDK's server answers an unknown tool as a tool error
