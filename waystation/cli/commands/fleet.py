"""`waystation fleet ...`: the hosts the hub knows, and work for one of them. Both talk to the hub
named by `[fleet]` themselves: no agent is needed, on this host or any other."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Annotated, Any

import typer

from waystation.cli.common import JsonFlag, typer_app

fleet_app = typer_app(help="The fleet's hosts (from the hub), and work for them.", no_args_is_help=True)

# A host writes its status every minute; one not heard from for over two and a half is stale.
STALE_AFTER_S = 150.0


def _hub() -> Any:
    from waystation.adapters.fleet.hub import Hub
    from waystation.config import Paths, check_fleet_creds, load_settings
    from waystation.errors import ConfigError

    settings = load_settings(Paths.resolve())
    if not settings.fleet.url:
        raise ConfigError("fleet.url", "no hub is set: set [fleet] url (or WAYSTATION_FLEET__URL)")
    check_fleet_creds(settings.fleet)
    return Hub(settings.fleet, name="waystation cli", quiet=True)


async def _statuses() -> list[dict[str, Any]]:
    from waystation import timeutil
    from waystation.adapters.fleet.layout import HOSTS_BUCKET

    hub = _hub()
    try:
        await hub.connect()
        # Each part of the hub is set up as the hosts would: one the hub refuses says why here
        # (on stderr: --json stays the list of hosts), where its absence would read "no hosts".
        for part in await hub.ensure():
            if part.name != HOSTS_BUCKET and (part.refused or part.note):  # the bucket's: the error below
                sys.stderr.write(f"warning: {part.refused or part.note}\n")
        found = await hub.statuses()
    finally:
        await hub.close()
    now = time.time()
    hosts = []
    for host, status in sorted(found.items()):
        at = status.get("at")
        try:
            age = max(0.0, now - timeutil.parse_iso(at)) if isinstance(at, str) else None
        except ValueError:
            age = None
        stale = age is None or age > STALE_AFTER_S
        seen = None if age is None else round(age, 1)
        hosts.append({**status, "host": host, "age_s": seen, "stale": stale})
    return hosts


def _table(hosts: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from waystation.cli import render

    if not hosts:
        render.say("no hosts in the hub yet")
        return
    table = Table("HOST", "CONNECTIVITY", "PENDING", "DEAD", "MODEL", "LAST RECEIPT", "SEEN")
    for h in hosts:
        queue = h.get("queue") or {}
        model = h.get("model") or {}
        last = h.get("last_receipt") or {}
        age = h.get("age_s")
        seen = "?" if age is None else render.duration(float(age)) + " ago"
        table.add_row(
            str(h["host"]),
            str(h.get("connectivity")),
            str(queue.get("pending", "")),
            str(queue.get("dead", "")),
            str(model.get("name") or model.get("path") or "") if isinstance(model, dict) else str(model),
            str(last.get("id", "")),
            f"{seen} (stale)" if h.get("stale") else seen,
        )
    render.console().print(table)


@fleet_app.command("status")
def fleet_status(as_json: JsonFlag = False) -> None:
    """List the hosts from the hub's `waystation_hosts` bucket, and how long since each was heard.

    ```
    waystation fleet status --json
    ```
    """
    from waystation.cli import render

    render.output(asyncio.run(_statuses()), as_json, _table)


async def _submit(host: str, body: dict[str, Any], key: str | None) -> dict[str, Any]:
    from uuid import uuid4

    from waystation.adapters.fleet.hub import work_subject

    hub = _hub()
    msg_id = key or f"{host}-{uuid4().hex}"
    try:
        await hub.connect()
        await hub.work_stream()
        ack = await hub.publish(work_subject(host), json.dumps(body).encode(), msg_id)
    finally:
        await hub.close()
    return {"host": host, "msg_id": msg_id, "stream_seq": ack.seq, "duplicate": ack.duplicate}


@fleet_app.command("submit")
def fleet_submit(
    host: Annotated[str, typer.Argument(metavar="HOST")],
    tool: Annotated[str, typer.Argument(metavar="TOOL")],
    args: Annotated[str, typer.Option("--args", metavar="JSON", help="The tool's arguments.")] = "{}",
    key: Annotated[
        str | None, typer.Option("--key", metavar="K", help="Message id and the task's idempotency key.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Publish a task for HOST to `waystation.HOST.work`; the host adds it to its queue.

    ```
    waystation fleet submit edge-7 http --args '{"method": "GET", "url": "https://example.com/"}'
    ```
    """
    from waystation.cli import render
    from waystation.config import FLEET_HOST
    from waystation.errors import MalformedRequest

    if not FLEET_HOST.fullmatch(host):
        raise MalformedRequest("HOST must be 1 to 64 letters, digits, _ or -")
    try:
        parsed = json.loads(args)
    except ValueError as exc:
        raise MalformedRequest(f"--args is not JSON: {exc}") from None
    body: dict[str, Any] = {"tool": tool, "args": parsed}
    if key:
        body["idempotency_key"] = key
    answer = asyncio.run(_submit(host, body, key))
    render.output(answer, as_json, lambda a: render.say(f"submitted to {a['host']}: message {a['msg_id']}"))
