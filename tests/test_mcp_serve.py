"""Waystation as an MCP server, with the official `mcp` SDK as the client and a real agent.

- Over stdio (`waystation mcp serve`, launched by the SDK's stdio client as a host launches it):
  tools/list shows `ask`, `queue_task` and `status`; `status` and `queue_task` answer (a bad
  task is a tool error, as `POST /v1/tasks` refuses it).
- Over Streamable HTTP at `/mcp` on the agent's socket: offline, an `ask` that names a URL parks.
  A client without the tasks extension gets "parked: turn ID"; one with it gets a task whose id
  is the turn id. kill -9, restart: `tasks/get` still answers (working), and once online the
  turn resumes, `tasks/get` says completed and `tasks/result` gives the answer.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from support.agentproc import Agent, Receiver, agent_env, started_agent, wait_for

from waystation.cli.commands.mcp_serve import relay

TASKS = {"io.modelcontextprotocol/tasks": {}}
TOOLS = {"ask", "queue_task", "status"}


@pytest.fixture
def agent() -> Iterator[Agent]:
    with started_agent({"WAYSTATION_CONNECTIVITY__MODE": "offline"}) as agent:
        yield agent


@asynccontextmanager
async def over_stdio(home: Path) -> AsyncIterator[ClientSession]:
    env = agent_env(home)
    server = StdioServerParameters(command=sys.executable, args=["-m", "waystation", "mcp", "serve"], env=env)
    async with stdio_client(server) as streams, ClientSession(streams[0], streams[1]) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def over_socket(socket: Path, tasks: bool) -> AsyncIterator[ClientSession]:
    transport = httpx2.AsyncHTTPTransport(uds=str(socket))
    async with (
        httpx2.AsyncClient(transport=transport, timeout=180) as http,
        streamable_http_client("http://waystation/mcp", http_client=http) as streams,
        ClientSession(streams[0], streams[1], extensions=TASKS if tasks else None) as session,
    ):
        await session.initialize()
        yield session


def text_of(result: types.CallToolResult) -> str:
    (content,) = result.content
    assert isinstance(content, types.TextContent)
    return content.text


async def ask_as_task(session: ClientSession, prompt: str) -> types.CreateTaskResult:
    params = types.CallToolRequestParams(name="ask", arguments={"prompt": prompt})
    return await session.send_request(types.CallToolRequest(params=params), types.CreateTaskResult)


async def get_task(session: ClientSession, task_id: str) -> types.GetTaskResult:
    request = types.GetTaskRequest(params=types.GetTaskRequestParams(task_id=task_id))
    return await session.send_request(request, types.GetTaskResult)


async def test_stdio_lists_the_tools_and_answers_status_and_queue_task(agent: Agent) -> None:
    async with over_stdio(agent.home) as session:
        listed = await session.list_tools()
        assert {t.name for t in listed.tools} == TOOLS
        status = await session.call_tool("status", {})
        assert not status.is_error
        assert status.structured_content is not None
        assert status.structured_content["connectivity"]["mode"] == "offline"
        args: dict[str, Any] = {"method": "POST", "url": "http://127.0.0.1:9/mcp"}
        body = {"tool": "http_request", "args": args, "idempotency_key": "mcp-1"}
        queued = await session.call_tool("queue_task", body)
        assert not queued.is_error, text_of(queued)
        task = json.loads(text_of(queued))
        assert task["state"] == "pending" and task["idempotency_key"] == "mcp-1"
        again = await session.call_tool("queue_task", body)  # the same key: the same task
        assert json.loads(text_of(again))["id"] == task["id"]
        refused = await session.call_tool("queue_task", {"tool": "nope", "args": {}})
        assert refused.is_error and "unknown_tool" in text_of(refused)
    (listed_task,) = agent.api("GET", "/v1/tasks").json()
    assert listed_task["id"] == task["id"]


def test_the_wire_as_the_spec_says(agent: Agent) -> None:
    """What the SDK's client does not show: status codes, the session id, JSON-RPC errors."""

    def rpc(method: str, params: dict[str, Any] | None = None, **headers: str) -> Any:
        body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": params or {}}
        return agent.api("POST", "/mcp", json=body, headers=headers)

    capabilities = {"extensions": TASKS}
    hello = rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": capabilities})
    assert hello.status_code == 200 and hello.json()["result"]["protocolVersion"] == "2025-06-18"
    assert hello.headers["Mcp-Session-Id"].startswith("t.")  # it declared the tasks extension
    plain = rpc("initialize", {"protocolVersion": "1999-01-01", "capabilities": {}})
    assert plain.json()["result"]["protocolVersion"] == "2025-11-25"  # ours, for one it cannot speak
    assert plain.headers["Mcp-Session-Id"].startswith("p.")
    note = agent.api("POST", "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert note.status_code == 202 and note.content == b""
    assert rpc("ping").json() == {"jsonrpc": "2.0", "id": 7, "result": {}}
    assert rpc("resources/list").json()["error"]["code"] == -32601
    assert rpc("tools/call", {"name": "nope"}).json()["error"]["code"] == -32602
    assert rpc("tasks/get", {"taskId": "turn_nope"}).json()["error"]["code"] == -32602
    broken = agent.api("POST", "/mcp", content=b"{not json")
    assert broken.status_code == 400 and broken.json()["error"]["code"] == -32700
    assert agent.api("GET", "/mcp").status_code == 405  # no stream: it sends nothing unasked
    assert agent.api("DELETE", "/mcp").status_code == 204


class ScriptedAgent:
    """Stands in for the socket client: answers each POST with the next scripted response."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.sent: list[dict[str, str]] = []

    def post_raw(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        self.sent.append(headers)
        return self.answers.pop(0)


def test_the_relay_keeps_the_session_and_answers_every_request_in_json_rpc() -> None:
    hello = httpx.Response(
        200, json={"jsonrpc": "2.0", "id": 1, "result": {}}, headers={"Mcp-Session-Id": "t.ab"}
    )
    too_big = httpx.Response(413, json={"error": {"code": "body_too_large", "message": "over"}})
    agent = ScriptedAgent(hello, httpx.Response(202), too_big)
    lines = [
        '{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}',
        "",
        '{"jsonrpc": "2.0", "method": "notifications/initialized"}',
        '{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {}}',
    ]
    out = io.StringIO()
    relay(agent, io.StringIO("\n".join(lines) + "\n"), out)  # type: ignore[arg-type]
    first, last = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["id"] == 1 and "result" in first
    assert last["id"] == 2 and last["error"]["code"] == -32000 and "413" in last["error"]["message"]
    assert [h.get("Mcp-Session-Id") for h in agent.sent] == [None, "t.ab", "t.ab"]


async def test_stdio_without_an_agent_answers_each_request_with_an_error(tmp_path: Path) -> None:
    with pytest.raises(BaseExceptionGroup) as caught:
        async with over_stdio(tmp_path):
            pass
    assert "agent_not_running" in " ".join(str(e) for e in leaves(caught.value))


def leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_an_offline_ask_is_a_task_that_survives_kill_9(agent: Agent, receiver: Receiver) -> None:
    async with over_socket(agent.socket, tasks=False) as plain:
        assert {t.name for t in (await plain.list_tools()).tools} == TOOLS
        url = receiver.url("/page/Plain-Harbour")
        answered = await plain.call_tool("ask", {"prompt": f"Fetch {url} and tell me its title."})
        assert text_of(answered).startswith("parked: turn turn_"), text_of(answered)
    url = receiver.url("/page/Quiet-Harbour")
    async with over_socket(agent.socket, tasks=True) as session:
        created = await ask_as_task(session, f"Fetch {url} and tell me its title.")
        turn_id = created.task.task_id
        assert turn_id.startswith("turn_") and created.task.status == "working"
        wait_for(lambda: agent.api("GET", f"/v1/turns/{turn_id}").json()["state"] == "parked", timeout=120)
    agent.kill()
    agent.start()
    async with over_socket(agent.socket, tasks=True) as session:
        after = await get_task(session, turn_id)
        assert after.status == "working" and after.status_message == "parked"
        agent.set_mode("online")
        wait_for(
            lambda: agent.api("GET", f"/v1/turns/{turn_id}").json()["state"] not in ("parked", "resuming"),
            timeout=240,
            interval=0.5,
        )
        done = await get_task(session, turn_id)
        assert done.status == "completed", done
        request = types.GetTaskPayloadRequest(params=types.GetTaskPayloadRequestParams(task_id=turn_id))
        result = await session.send_request(request, types.CallToolResult)
        assert not result.is_error and text_of(result)
        missing = types.GetTaskRequest(params=types.GetTaskRequestParams(task_id="turn_nope"))
        with pytest.raises(Exception, match="no task"):
            await session.send_request(missing, types.GetTaskResult)
    assert len({h.key for h in receiver.hits("/page/Quiet-Harbour")}) == 1


def test_serve_help_gives_a_host_config(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "waystation", "mcp", "serve", "--help"],
        env=agent_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert '"mcpServers"' in done.stdout and "tasks/get" in done.stdout
