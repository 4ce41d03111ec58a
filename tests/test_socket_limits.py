"""Clients that open connections and never finish a request (issue 12, item 2), against a real agent:
half-sent heads are closed after the head timeout and status answers meanwhile; past the
connection cap a client is told 503 at once, and the log says so once, not at every refusal; a
body that never comes is a 408, not a handler waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from aiohttp import web
from support.agentproc import AGENT_COMMAND, Agent
from support.floods import flooding

from waystation.agent import http_io
from waystation.agent.connections import HEAD_TIMEOUT_S, RESERVED_FILES

HALF_HEAD = b"POST /v1/tasks HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\n"


@contextlib.contextmanager
def held_connections(path: Path, count: int, first_bytes: bytes = HALF_HEAD) -> Iterator[list[socket.socket]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 512)), hard))
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            held.append(sock)
            sock.connect(str(path))
            sock.sendall(first_bytes)
        yield held
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def closed_by_agent(sock: socket.socket) -> bool:
    sock.settimeout(0.5)
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_half_sent_requests_are_closed_and_status_answers_meanwhile(
    agent_factory: Callable[..., Agent],
) -> None:
    agent = agent_factory().start()
    # From this one process: 900 of the 1,024 connections (of 4,096) that are one process's share
    # (room left for the status calls, and for connections the agent has not yet seen closed).
    with held_connections(agent.socket, 900) as held:
        started = time.monotonic()
        assert agent.api("GET", "/v1/status").status_code == 200  # 1,000 stuck clients did not deafen it
        time.sleep(max(0.0, HEAD_TIMEOUT_S + 2 - (time.monotonic() - started)))
        sampled = held[:: len(held) // 20]
        still_open = [sock for sock in sampled if not closed_by_agent(sock)]
    assert not still_open, f"{len(still_open)} of {len(sampled)} half-sent requests outlived the head timeout"
    assert agent.api("GET", "/v1/status").status_code == 200
    assert "out of system resource" not in agent.output()


def test_past_the_cap_a_connection_is_told_503_at_once(
    agent_factory: Callable[..., Agent], monkeypatch: pytest.MonkeyPatch
) -> None:
    files = RESERVED_FILES + 40  # the agent's cap comes out at 40 connections
    monkeypatch.setattr(
        "support.agentproc.AGENT_COMMAND", ["prlimit", f"--nofile={files}:{files}", "--", *AGENT_COMMAND]
    )
    agent = agent_factory().start()
    with contextlib.ExitStack() as holders:
        for _ in range(4):  # each holder process takes its share, a quarter
            holders.enter_context(flooding("hold", agent.socket, 10))
        answers = []
        for _ in range(5):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as extra:
                extra.settimeout(5)
                extra.connect(str(agent.socket))
                answers.append(extra.recv(4096).decode())  # answered before it sends a byte
        for answer in answers:
            assert answer.startswith("HTTP/1.1 503"), answer[:200]
            assert "too_many_connections" in answer and "Retry-After: 1" in answer
            assert "serving 40 connections already" in answer  # the cap, not one peer's share
    time.sleep(0.5)
    assert agent.api("GET", "/v1/status").status_code == 200  # the held ones gone, it serves again
    assert agent.output().count("refusing connections") == 1


async def test_a_body_that_never_comes_is_a_408(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(http_io, "BODY_TIMEOUT_S", 0.5)

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(await http_io.json_body(request))

    from waystation.agent.api import errors_as_json

    app = web.Application(middlewares=[errors_as_json])
    app.router.add_post("/echo", echo)
    async with serving(app, tmp_path / "s.sock") as path:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b'POST /echo HTTP/1.1\r\nHost: w\r\nContent-Length: 50\r\n\r\n{"a":')
        await writer.drain()
        answer = (await asyncio.wait_for(reader.read(4096), 5)).decode()
        writer.close()
        assert answer.startswith("HTTP/1.1 408"), answer[:200]
        assert "request_timeout" in answer
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(path))) as client:
            whole = await client.post("http://w/echo", json={"a": 1})  # a whole body is not held up
        assert whole.json() == {"a": 1}


@contextlib.asynccontextmanager
async def serving(app: web.Application, path: Path) -> AsyncIterator[Path]:
    """`app` served in this process on the Unix socket `path`, for the length of the block."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    try:
        yield path
    finally:
        await runner.cleanup()


async def test_an_events_client_closing_mid_stream_is_no_unexpected_error(tmp_path: Path) -> None:
    """`waystation events` stopped with Ctrl-C: the agent's next write finds the connection reset.
    That is how an event stream ends, logged at debug, not an error with a traceback."""
    from structlog.testing import capture_logs

    from waystation.agent.api import errors_as_json, events
    from waystation.station.events import EventBus

    bus = EventBus()
    station = types.SimpleNamespace(announcer=types.SimpleNamespace(events=bus))
    app = web.Application(middlewares=[errors_as_json])
    app[http_io.STATION] = cast(Any, station)
    app.router.add_get("/v1/events", events)
    async with serving(app, tmp_path / "s.sock") as path:
        with capture_logs() as logged:
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b"GET /v1/events HTTP/1.1\r\nHost: w\r\n\r\n")
            assert b": waystation events" in await asyncio.wait_for(reader.readuntil(b"events\n\n"), 5)
            writer.close()
            await writer.wait_closed()
            for n in range(50):  # the stream ends at its first write after the close
                bus.publish("task", {"n": n})
                await asyncio.sleep(0.01)
                if not bus._subscribers:
                    break
            assert not bus._subscribers, "the handler is still writing to a closed connection"
    assert [e["log_level"] for e in logged] == ["debug"], logged
