"""Reading and checking `[mcp.servers.NAME]` tables (config_load.py, and `waystation mcp add`
and `import` before they write one): a stdio server has `command` (and `args`, `env`), a remote
one an http(s) `url` (and `headers`, whose values may be `{"secret": NAME}`), never both."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from waystation.config import SECRET_NAME, McpServerSettings
from waystation.errors import ConfigError

SERVER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
# A server's tools are offered as NAME__TOOL: "__" separates the server from the tool.
TOOL_SEPARATOR = "__"
KEYS = ("command", "args", "env", "url", "headers", "enabled")


def mcp_servers(section: Mapping[str, Any]) -> dict[str, McpServerSettings]:
    """The `[mcp]` section: only `servers`, a table of server tables."""
    unknown = set(section) - {"servers"}
    if unknown:
        raise ConfigError(f"mcp.{sorted(unknown)[0]}", "unknown key; known: servers")
    servers = section.get("servers", {})
    if not isinstance(servers, Mapping):
        raise ConfigError("mcp.servers", "expected [mcp.servers.NAME] tables")
    return {name: mcp_server(name, table) for name, table in servers.items()}


def mcp_server(name: str, table: Any) -> McpServerSettings:
    """One server's table, checked; ConfigError names the key that is wrong."""
    where = f"mcp.servers.{name}"
    if not SERVER_NAME.fullmatch(name):
        raise ConfigError(where, "a server's name is 1 to 64 letters, digits or -")
    if not isinstance(table, Mapping):
        raise ConfigError(where, "expected a [mcp.servers.NAME] table")
    for key in table:
        if key not in KEYS:
            raise ConfigError(f"{where}.{key}", f"unknown key; known: {', '.join(KEYS)}")
    command, url = table.get("command", ""), table.get("url", "")
    if not isinstance(command, str) or not isinstance(url, str):
        raise ConfigError(
            f"{where}.{'command' if not isinstance(command, str) else 'url'}", "expected a string"
        )
    if bool(command) == bool(url):
        raise ConfigError(where, "set either command (a stdio server) or url (a Streamable HTTP server)")
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.url", "must be an http:// or https:// URL")
    args = table.get("args", [])
    if not isinstance(args, list | tuple) or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"{where}.args", "expected a list of strings")
    env = _strings(f"{where}.env", table.get("env", {}))
    headers = _headers(f"{where}.headers", table.get("headers", {}))
    if url and (args or env):
        raise ConfigError(where, "args and env are for a stdio server (command), not a url")
    if command and headers:
        raise ConfigError(f"{where}.headers", "headers are for a url, not a stdio server")
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}.enabled", "expected true or false")
    return McpServerSettings(
        command=command, args=tuple(args), env=env, url=url, headers=headers, enabled=enabled
    )


def _strings(key: str, table: Any) -> dict[str, str]:
    if not isinstance(table, Mapping) or not all(isinstance(v, str) for v in table.values()):
        raise ConfigError(key, "expected a table of strings")
    return {str(k): v for k, v in table.items()}


def _headers(key: str, table: Any) -> dict[str, str | Mapping[str, str]]:
    if not isinstance(table, Mapping):
        raise ConfigError(key, "expected a table")
    headers: dict[str, str | Mapping[str, str]] = {}
    for name, value in table.items():
        if isinstance(value, str):
            headers[str(name)] = value
        elif (
            isinstance(value, Mapping)
            and set(value) == {"secret"}
            and isinstance(value["secret"], str)
            and SECRET_NAME.fullmatch(value["secret"])
        ):
            headers[str(name)] = {"secret": value["secret"]}
        else:  # the value itself is never shown: it may be a secret
            raise ConfigError(f"{key}.{name}", 'expected a string or {"secret": NAME}')
    return headers


def server_table(server: McpServerSettings) -> dict[str, Any]:
    """A server's settings as its TOML table (what `mcp add` and `import` write)."""
    if server.url:
        table: dict[str, Any] = {"url": server.url}
        if server.headers:
            table["headers"] = {k: v if isinstance(v, str) else dict(v) for k, v in server.headers.items()}
    else:
        table = {"command": server.command}
        if server.args:
            table["args"] = list(server.args)
        if server.env:
            table["env"] = dict(server.env)
    table["enabled"] = server.enabled
    return table
