"""`waystation fleet ...`: the hosts the hub knows, and work for one of them. Both talk to the hub
named by `[fleet]` themselves: no agent is needed, on this host or any other."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from waystation.cli.common import JsonFlag, typer_app

fleet_app = typer_app(
    help="The fleet's hosts (from the hub), and signed work for them: a host takes work only when a "
    "key its [fleet] work_keys lists signed it (`fleet keygen` makes one; `fleet submit --key-file` signs).",
    no_args_is_help=True,
)

# A host writes its status every minute; one not heard from for over two and a half is stale.
STALE_AFTER_S = 150.0


def _hub() -> Any:
    from waystation.adapters.fleet.hub import Hub
    from waystation.config import Paths, check_fleet_creds
    from waystation.config_load import load_settings
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
        queue = _mapping(h.get("queue"))
        model = h.get("model") or {}
        last = _mapping(h.get("last_receipt"))
        age = h.get("age_s")
        seen = "?" if age is None else render.duration(float(age)) + " ago"
        cells = (
            h["host"],
            h.get("connectivity"),
            queue.get("pending", ""),
            queue.get("dead", ""),
            (model.get("name") or model.get("path") or "") if isinstance(model, dict) else model,
            last.get("id", ""),
        )
        table.add_row(*map(_inert, cells), f"{seen} (stale)" if h.get("stale") else seen)
    render.console().print(table)


# C0 and C1 control characters (ESC, CSI, BEL, ...), DEL among them: what a terminal acts on.
CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _inert(value: Any) -> str:
    """A value a host (or anyone who could write the bucket) put there, as plain text: control
    characters dropped, rich's markup escaped, so that it can neither reach the terminal nor
    break the table for everyone (`[/]`)."""
    from rich.markup import escape

    return escape(CONTROLS.sub("", str(value)))


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@fleet_app.command("status")
def fleet_status(as_json: JsonFlag = False) -> None:
    """List the hosts from the hub's `waystation_hosts` bucket, and how long since each was heard.

    ```
    waystation fleet status --json
    ```
    """
    from waystation.cli import render

    render.output(asyncio.run(_statuses()), as_json, _table)


async def _submit(host: str, body: dict[str, Any], msg_id: str, signer: Any) -> dict[str, Any]:
    from waystation.adapters.fleet.hub import work_subject
    from waystation.adapters.fleet.work import sign_work

    hub = _hub()
    data = json.dumps(body).encode()
    try:
        await hub.connect()
        await hub.ensure()  # the operator's user makes the hub's parts; a host's may not (README)
        ack = await hub.publish(work_subject(host), data, msg_id, sign_work(data, signer))
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
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            metavar="FILE",
            help="The operator's private key (`fleet keygen`) that signs the work. Required: a host "
            "takes only work signed by a key its [fleet] work_keys lists.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Publish a task for HOST to `waystation.HOST.work`, signed with --key-file.

    The host adds it to its queue when a key in its `[fleet] work_keys` verifies it, it names only secrets in
    `[fleet] work_secrets` and reaches a host `[fleet] work_hosts` allows (none listed: public
    hosts only). Anything else the host terminates and logs.

    ```
    waystation fleet submit edge-7 http_request --key-file ops.key --args '{"method": "GET", "url": "https://example.com/"}'
    ```
    """
    from uuid import uuid4

    from waystation.cli import render
    from waystation.config import FLEET_HOST
    from waystation.errors import MalformedRequest

    if not FLEET_HOST.fullmatch(host):
        raise MalformedRequest("HOST must be 1 to 64 letters, digits, _ or -")
    if key_file is None:
        raise MalformedRequest(
            "work must be signed: give --key-file FILE (`waystation fleet keygen NAME` makes one)"
        )
    signer = _signing_key(key_file)
    try:
        parsed = json.loads(args)
    except ValueError as exc:
        raise MalformedRequest(f"--args is not JSON: {exc}") from None
    # The key is in the signed body, not only in the (unsigned) Nats-Msg-Id header: a copy of this
    # message published again under another id is the same task, never a second one.
    msg_id = key or f"{host}-{uuid4().hex}"
    body: dict[str, Any] = {"tool": tool, "args": parsed, "idempotency_key": msg_id}
    answer = asyncio.run(_submit(host, body, msg_id, signer))
    render.output(answer, as_json, lambda a: render.say(f"submitted to {a['host']}: message {a['msg_id']}"))


def _signing_key(path: Path) -> Any:
    from waystation.errors import BadCheckpoint, MalformedRequest
    from waystation.receipts.checkpoints import SigningKey

    try:
        return SigningKey.parse_private(path.expanduser().read_text())
    except OSError as exc:
        raise MalformedRequest(f"--key-file: cannot read {path}: {exc.strerror or exc}") from None
    except (BadCheckpoint, UnicodeDecodeError) as exc:
        problem = exc.message if isinstance(exc, BadCheckpoint) else "not text"
        raise MalformedRequest(f"--key-file {path}: {problem}") from None


@fleet_app.command("keygen")
def fleet_keygen(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The key's name, e.g. ops@example.org.")],
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            metavar="FILE",
            help="Where to write the private key (0600; never overwritten). "
            "Default: fleet-keys/NAME.key beside the config file.",
        ),
    ] = None,
) -> None:
    """Make an operator's key pair for signing fleet work; prints the verifier key.

    Writes the private key (0600) and prints the verifier key (NAME+KEYID+BASE64) to list in each
    host's `[fleet] work_keys`. The formats are
    golang.org/x/mod/sumdb/note's (C2SP signed-note, Ed25519).

    ```
    waystation fleet keygen ops@example.org
    ```
    """
    import os
    import sys

    from waystation.config import Paths
    from waystation.errors import BadCheckpoint, MalformedRequest
    from waystation.receipts.checkpoints import SigningKey

    try:
        key = SigningKey.generate(name)
    except BadCheckpoint as exc:
        raise MalformedRequest(f"NAME: {exc.message}") from None
    path = key_file or Paths.resolve().config_file.parent / "fleet-keys" / f"{name.replace('/', '_')}.key"
    path = path.expanduser()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise MalformedRequest(f"{path} exists: remove it or give another --key-file") from None
    except OSError as exc:
        raise MalformedRequest(f"cannot write {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as out:
        out.write(key.private_text() + "\n")
    sys.stderr.write(f"private key written to {path} (0600); sign with: fleet submit ... --key-file {path}\n")
    sys.stdout.write(f"{key.verifier}\n")
