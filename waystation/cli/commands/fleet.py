"""`waystation fleet ...`: the hosts the hub knows, and work for one of them. Both talk to the hub
named by `[fleet]` themselves: no agent is needed, on this host or any other."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from waystation.cli.common import JsonFlag, typer_app

fleet_app = typer_app(
    help="The fleet's hosts (from the hub), and signed work for them: a host takes work only when a "
    "key its [fleet] work_keys lists signed it (`fleet keygen` makes one; `fleet submit --key-file` signs).",
    no_args_is_help=True,
)


def _paths() -> Any:
    from waystation.config import Paths

    return Paths.resolve()


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


# The tools a host runs (adapters/tools' default_tools: a test holds the two together), named here
# so that `--help` does not import them.
TOOLS = ("http_request", "web_fetch")

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
    from waystation.cli.direct import fleet
    from waystation.station.ops.fleet import hosts

    def warn(warning: str) -> None:  # on stderr: --json stays the list of hosts
        sys.stderr.write(f"warning: {warning}\n")

    render.output(fleet(_paths(), "waystation cli", lambda console: hosts(console, warn)), as_json, _table)


@fleet_app.command("submit")
def fleet_submit(
    host: Annotated[str, typer.Argument(metavar="HOST")],
    tool: Annotated[str, typer.Argument(metavar="TOOL", help=f"The tool: {' or '.join(TOOLS)}.")],
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
    from waystation.cli import render
    from waystation.cli.common import usage_error
    from waystation.cli.direct import fleet
    from waystation.errors import InputError, MalformedRequest
    from waystation.station.ops import fleet as fleet_ops

    fleet_ops.check_host(host)
    if key_file is None:
        raise MalformedRequest(
            "work must be signed: give --key-file FILE (`waystation fleet keygen NAME` makes one)"
        )
    signer = _signing_key(key_file)
    try:
        parsed = json.loads(args)
    except ValueError as exc:
        raise MalformedRequest(f"--args is not JSON: {exc}") from None

    async def publish(console: Any) -> tuple[dict[str, Any], str | None]:
        try:  # checked as `POST /v1/tasks` checks a task: work the host would refuse is a usage error
            body = fleet_ops.work(console, host, tool, parsed, key)
        except InputError as exc:
            raise usage_error(exc.message) from None
        return await fleet_ops.submit(console, host, body, signer)

    answer, warning = fleet(_paths(), "waystation cli", publish)
    if warning:
        sys.stderr.write(f"warning: {warning}\n")
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
    import sys

    from waystation import durable
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
        durable.make_dirs(path.parent, 0o700)
        made = durable.write_new(path, key.private_text() + "\n", 0o600)
    except OSError as exc:
        raise MalformedRequest(f"cannot write {path}: {exc.strerror or exc}") from None
    if not made:
        raise MalformedRequest(f"{path} exists: remove it or give another --key-file")
    sys.stderr.write(f"private key written to {path} (0600); sign with: fleet submit ... --key-file {path}\n")
    sys.stdout.write(f"{key.verifier}\n")
