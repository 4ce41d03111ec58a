"""MCP server operations: add, remove and import `[mcp.servers.NAME]` tables in the config file,
and list the servers with their tools as last listed (the database's `mcp_tools`).

The config file is edited with tomlkit, so its other sections, comments and order stay as they
were; each server table is checked (config_mcp.py) before anything is written, and the file is
replaced whole (a crash leaves the old file or the new one, never half of one). The agent reads
the file at start: a running agent uses a change after `waystation service restart` (or a new
`waystation run`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit

from waystation import durable, timeutil
from waystation.config import McpServerSettings
from waystation.config_mcp import mcp_server, server_table
from waystation.errors import ConfigError, MalformedRequest, NotFound
from waystation.station import Station


def add_server(config_file: Path, name: str, server: McpServerSettings) -> bool:
    """Write the server's table (replacing one of the same name); whether it replaced one."""
    mcp_server(name, server_table(server))  # the same checks as loading the file
    doc = _read(config_file)
    servers = _servers(doc)
    replaced = name in servers
    servers[name] = _toml_table(server)
    _write(config_file, doc)
    return replaced


def remove_server(config_file: Path, name: str) -> None:
    doc = _read(config_file)
    servers = _servers(doc)
    if name not in servers:
        raise NotFound("MCP server", name)
    del servers[name]
    _write(config_file, doc)


def import_servers(config_file: Path, source: Path) -> list[str]:
    """Add every server of a JSON file's `mcpServers` (Claude Desktop's config, Claude Code's
    `.mcp.json`, Cursor's `mcp.json`); the names as added (characters other than letters,
    digits and `-` become `-`). Nothing is written unless every server is valid."""
    try:
        data = json.loads(source.read_text())
    except OSError as exc:
        raise MalformedRequest(f"cannot read {source}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise MalformedRequest(f"{source} is not JSON: {exc}") from None
    entries = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise MalformedRequest(f'{source} has no "mcpServers" object')
    found: dict[str, McpServerSettings] = {}
    for original, entry in entries.items():
        name = re.sub(r"[^A-Za-z0-9-]", "-", str(original))[:64]
        found[name] = mcp_server(name, _from_mcp_json(name, entry))
    doc = _read(config_file)
    servers = _servers(doc)
    for name, server in found.items():
        servers[name] = _toml_table(server)
    _write(config_file, doc)
    return list(found)


def _from_mcp_json(name: str, entry: Any) -> dict[str, Any]:
    """An `mcpServers` entry as a `[mcp.servers.NAME]` table."""
    if not isinstance(entry, dict):
        raise ConfigError(f"mcpServers.{name}", "expected an object")
    kind = entry.get("type") or entry.get("transport") or ("http" if "url" in entry else "stdio")
    if kind == "sse":
        raise ConfigError(
            f"mcpServers.{name}", "an SSE server (the old transport) is not supported: Streamable HTTP only"
        )
    table: dict[str, Any] = {}
    for key in ("command", "args", "env", "url", "headers"):
        if key in entry:
            table[key] = entry[key]
    if entry.get("disabled") is True:
        table["enabled"] = False
    return table


async def list_servers(station: Station) -> list[dict[str, Any]]:
    """Each configured server, with its tools and when they were listed (null: never yet)."""
    rows = await station.db.fetchall("SELECT server, tools, listed_at FROM mcp_tools")
    listed = {row["server"]: row for row in rows}
    servers = []
    for name, server in station.settings.mcp_servers.items():
        row = listed.get(name)
        tools = json.loads(row["tools"]) if row is not None else []
        servers.append(
            {
                "name": name,
                "transport": "http" if server.url else "stdio",
                "url" if server.url else "command": server.url or " ".join([server.command, *server.args]),
                "enabled": server.enabled,
                "tools": [
                    {"name": f"{name}__{t['name']}", "description": t.get("description", "")} for t in tools
                ],
                "listed_at": timeutil.iso(row["listed_at"]) if row is not None else None,
            }
        )
    return servers


def _toml_table(server: McpServerSettings) -> Any:
    """The server's table as written: its `env` and `headers` as inline tables, on one line."""
    table = tomlkit.table()
    for key, value in server_table(server).items():
        table[key] = _inline(value) if isinstance(value, dict) else value
    return table


def _inline(value: Mapping[str, Any]) -> Any:
    inline = tomlkit.inline_table()
    for key, item in value.items():
        inline[key] = _inline(item) if isinstance(item, Mapping) else item
    return inline


def _read(config_file: Path) -> tomlkit.TOMLDocument:
    if not config_file.exists():
        return tomlkit.document()
    try:
        return tomlkit.parse(config_file.read_text())
    except OSError as exc:
        raise ConfigError(str(config_file), f"cannot read: {exc.strerror}") from None
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(str(config_file), f"not valid TOML: {exc}") from None


def _servers(doc: tomlkit.TOMLDocument) -> Any:
    mcp = doc.get("mcp")
    if mcp is None:
        mcp = tomlkit.table(is_super_table=True)
        doc["mcp"] = mcp
    if not isinstance(mcp, Mapping):
        raise ConfigError("mcp", "expected a [mcp] table")
    servers = mcp.get("servers")
    if servers is None:
        servers = tomlkit.table(is_super_table=True)
        mcp["servers"] = servers  # type: ignore[index]
    if not isinstance(servers, Mapping):
        raise ConfigError("mcp.servers", "expected [mcp.servers.NAME] tables")
    return servers


def _write(config_file: Path, doc: tomlkit.TOMLDocument) -> None:
    durable.make_dirs(config_file.parent)
    mode = config_file.stat().st_mode & 0o777 if config_file.exists() else 0o600
    durable.write_atomic(config_file, tomlkit.dumps(doc), mode)
