"""Real MCP servers for the tests, written with the official SDK's MCPServer (FastMCP in mcp 1):
a stdio one (this file run as a script: what `[mcp.servers.NAME] command` launches) and a
Streamable HTTP one on loopback under uvicorn, recording each JSON-RPC request's method and
`Idempotency-Key` header."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mcp.server.mcpserver import MCPServer


def stdio_server() -> MCPServer:
    app = MCPServer("calc")

    @app.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @app.tool()
    async def nap(seconds: float) -> str:
        """Sleep, then answer: a server that hangs."""
        import anyio

        await anyio.sleep(seconds)
        return "awake"

    return app


@dataclass
class RemoteServer:
    url: str
    # (JSON-RPC method, Idempotency-Key header) of each request the server was sent
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    # each request's headers (lower-case names)
    headers: list[dict[str, str]] = field(default_factory=list)

    def calls(self) -> list[str | None]:
        """The Idempotency-Key of each tools/call received."""
        return [key for method, key in self.requests if method == "tools/call"]


def _remote_app() -> MCPServer:
    app = MCPServer("tracker")

    @app.tool()
    def open_ticket(title: str) -> dict[str, Any]:
        """Open a ticket with a title; its number and title."""
        return {"number": 42, "title": title}

    return app


@contextmanager
def remote_server(app: MCPServer | None = None) -> Iterator[RemoteServer]:
    """A Streamable HTTP server on loopback (`app`, else the tracker) in a thread of its own."""
    import uvicorn

    inner = (app or _remote_app()).streamable_http_app()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    found = RemoteServer(url=f"http://127.0.0.1:{port}/mcp")

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await inner(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            method = str(json.loads(body).get("method"))
        except (ValueError, AttributeError):
            method = "?"
        found.requests.append((method, headers.get("idempotency-key")))
        found.headers.append(headers)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await inner(scope, replay, send)

    server = uvicorn.Server(uvicorn.Config(recording, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the MCP test server did not start")
        time.sleep(0.02)
    try:
        yield found
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


if __name__ == "__main__":
    stdio_server().run(*sys.argv[1:2])
