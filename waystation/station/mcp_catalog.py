"""The MCP servers' tools a model is offered: listed from each server, kept in the database
(`mcp_tools`), and put in the tool registry as NAME__TOOL.

A stdio server is listed whenever asked (it is local: offline too); a remote one only while
online, and otherwise offered from what the database kept of its last listing, so an offline turn
can still call it (the call parks). A server whose `url` or `command` changed since is listed
anew before its old list is offered.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import structlog

from waystation.adapters.mcp.session import ListedTool, McpRefused, list_tools
from waystation.adapters.mcp.tools import McpCallTool, ServerTool
from waystation.adapters.tools import ToolRegistry
from waystation.config import McpServerSettings
from waystation.db import Database
from waystation.errors import DeliveryError, InvalidArguments

log = structlog.get_logger(__name__)

LIST_TIMEOUT_S = 20.0


def source(server: McpServerSettings) -> str:
    """What a listing came from: a changed url or command is another server."""
    return server.url or json.dumps([server.command, *server.args])


class McpCatalog:
    def __init__(self, db: Database, registry: ToolRegistry, calls: McpCallTool) -> None:
        self._db = db
        self._registry = registry
        self._calls = calls
        self._listed: dict[str, list[ListedTool]] = {}
        self._lock = asyncio.Lock()
        self._relisting: set[asyncio.Task[None]] = set()
        calls.list_changed = self.list_changed

    @property
    def servers(self) -> Mapping[str, McpServerSettings]:
        return self._calls.servers

    async def load(self) -> None:
        """Offer what the database kept of each configured server's last listing."""
        for row in await self._db.fetchall("SELECT server, source, tools FROM mcp_tools"):
            server = self.servers.get(row["server"])
            if server is not None and source(server) == row["source"]:
                self._listed[row["server"]] = [ListedTool.from_json(t) for t in json.loads(row["tools"])]
        self._offer()

    async def refresh(self, *, online: bool) -> dict[str, str]:
        """List every enabled server that can be reached now (stdio always, remote when online);
        what failed, by server, is returned and logged, the last list kept."""
        failed: dict[str, str] = {}
        async with self._lock:
            for name, server in self.servers.items():
                if server.remote and not online:
                    continue
                await self._list(name, server, failed)
            self._offer()
        return failed

    def list_changed(self, name: str) -> None:
        """A server sent `notifications/tools/list_changed` during one of our sessions with it
        (a call, a poll): its tools are listed again now, in the background."""
        server = self.servers.get(name)
        if server is None:
            return
        log.info("an MCP server's tools changed; listing them again", server=name)

        async def relist() -> None:
            async with self._lock:
                await self._list(name, server, {})
                self._offer()

        task = asyncio.create_task(relist(), name=f"mcp relist {name}")
        self._relisting.add(task)
        task.add_done_callback(self._relisting.discard)

    async def _list(self, name: str, server: McpServerSettings, failed: dict[str, str]) -> None:
        try:
            headers = self._calls.headers(server) if server.remote else {}
            tools = await list_tools(name, server, headers, LIST_TIMEOUT_S)
        except (DeliveryError, InvalidArguments) as exc:
            failed[name] = exc.message
        except McpRefused as exc:  # a server that answers tools/list with an error
            failed[name] = str(exc)[:300]
        else:
            self._listed[name] = tools
            await self._store(name, server, tools)
            return
        log.warning("an MCP server's tools could not be listed", server=name, error=failed[name])

    async def _store(self, name: str, server: McpServerSettings, tools: list[ListedTool]) -> None:
        text = json.dumps([t.to_json() for t in tools])

        def write(conn: Any) -> None:
            conn.execute(
                "INSERT INTO mcp_tools (server, source, tools, listed_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(server) DO UPDATE SET source = excluded.source, tools = excluded.tools, "
                "listed_at = excluded.listed_at",
                (name, source(server), text, time.time()),
            )

        await self._db.write(write)

    def _offer(self) -> None:
        self._registry.set_listed(
            ServerTool(name, self.servers[name].remote, listed, self._calls)
            for name, tools in self._listed.items()
            if name in self.servers
            for listed in tools
        )
