"""`waystation mcp ...`: the MCP servers whose tools models are offered (as NAME__TOOL).

`add`, `rm` and `import` edit `[mcp.servers.NAME]` in the config file (the rest of the file is
kept as written); the agent reads it at start. `ls` shows the servers and their tools as last
listed (from the database: the agent lists them at start and whenever it comes online).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from waystation.cli.commands.mcp_serve import serve
from waystation.cli.common import JsonFlag, typer_app, usage_error, waystation

mcp_app = typer_app(
    help="MCP (the Model Context Protocol): add, list, remove and import the servers whose tools are "
    "offered to models as NAME__TOOL; `serve` is Waystation as an MCP server for an MCP host.",
    no_args_is_help=True,
)
mcp_app.command("serve")(serve)

RESTART = "the agent uses it from its next start (waystation service restart)"


@mcp_app.command("add")
def mcp_add(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Letters, digits and -: tools are offered as NAME__TOOL.")
    ],
    command: Annotated[
        list[str] | None,
        typer.Argument(metavar="-- COMMAND [ARGS...]", help="A stdio server: the command that starts it."),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="A remote server: its Streamable HTTP endpoint (http:// or https://)."),
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option(
            "--header",
            metavar="K=V",
            help='A header for a remote server (repeatable); V may be {"secret": "NAME"} (sent resolved).',
        ),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", metavar="K=V", help="An environment variable for a stdio server (repeatable)."),
    ] = None,
) -> None:
    """Add (or replace) an MCP server in the config file.

    ```
    waystation mcp add files -- npx -y @modelcontextprotocol/server-filesystem /home/me/notes
    waystation mcp add tracker --url https://mcp.example.com/mcp \\
        --header 'Authorization={"secret": "TRACKER_TOKEN"}'
    ```
    A stdio server's tools are local: called at once, also offline. A remote server's calls are
    network calls: parked while offline and delivered (with `Idempotency-Key`) when back online.
    """
    from waystation.config import McpServerSettings, Paths
    from waystation.station.ops import mcp

    if bool(command) == bool(url):
        raise usage_error("give either -- COMMAND [ARGS...] (a stdio server) or --url URL (a remote one)")
    if command and header:
        raise usage_error("--header is for a remote server (--url)")
    if url and env:
        raise usage_error("--env is for a stdio server (-- COMMAND)")
    if command:
        server = McpServerSettings(
            command=command[0], args=tuple(command[1:]), env=_pairs("--env", env, False)
        )
    else:
        server = McpServerSettings(url=url or "", headers=_pairs("--header", header, True))
    config_file = Paths.resolve().config_file
    replaced = mcp.add_server(config_file, name, server)
    sys.stdout.write(f"{'replaced' if replaced else 'added'} MCP server {name} in {config_file}; {RESTART}\n")


def _pairs(option: str, values: list[str] | None, secrets: bool) -> dict[str, Any]:
    pairs: dict[str, Any] = {}
    for item in values or []:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise usage_error(f"{option} takes K=V, not {item!r}")
        if secrets and value.lstrip().startswith("{"):
            try:
                pairs[key] = json.loads(value)
            except ValueError:
                raise usage_error(
                    f'{option} {key}: a secret is {{"secret": "NAME"}}, not {value!r}'
                ) from None
        else:
            pairs[key] = value
    return pairs


@mcp_app.command("ls")
def mcp_ls(as_json: JsonFlag = False) -> None:
    """List the configured MCP servers and their tools (as last listed)."""
    from waystation.cli import render
    from waystation.station.ops import mcp

    with waystation() as ws:
        servers = ws.direct.read(mcp.list_servers)
    render.output(servers, as_json, _servers_table)


def _servers_table(servers: list[dict[str, Any]]) -> None:
    from waystation.cli import render
    from waystation.cli.render.cells import ago, cell, new_table

    if not servers:
        sys.stdout.write("no MCP servers (waystation mcp add NAME -- COMMAND, or --url URL)\n")
        return
    table = new_table("name", "transport", "server", "enabled", "tools", "listed")
    for s in servers:
        tools = ", ".join(t["name"] for t in s["tools"])
        where = s.get("url") or s.get("command")
        listed = ago(s["listed_at"]) if s["listed_at"] is not None else None
        table.add_row(
            cell(s["name"]), cell(s["transport"]), cell(where), cell(s["enabled"]), cell(tools), cell(listed)
        )
    render.console().print(table)


@mcp_app.command("rm")
def mcp_rm(name: Annotated[str, typer.Argument(metavar="NAME")]) -> None:
    """Remove an MCP server from the config file."""
    from waystation.config import Paths
    from waystation.station.ops import mcp

    config_file = Paths.resolve().config_file
    mcp.remove_server(config_file, name)
    sys.stdout.write(f"removed MCP server {name} from {config_file}; {RESTART}\n")


@mcp_app.command("import")
def mcp_import(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="JSON with an mcpServers object: claude_desktop_config.json, .mcp.json, ~/.cursor/mcp.json.",
        ),
    ],
) -> None:
    """Add every server of another host's MCP configuration (its `mcpServers`).

    ```
    waystation mcp import ~/.config/Claude/claude_desktop_config.json
    waystation mcp import .mcp.json
    ```
    """
    from waystation.config import Paths
    from waystation.station.ops import mcp

    config_file = Paths.resolve().config_file
    names = mcp.import_servers(config_file, file)
    sys.stdout.write(
        f"imported {len(names)} MCP server(s) into {config_file}: {', '.join(names) or 'none'}; {RESTART}\n"
    )
