"""Fleet operations: this host's status as the hub's bucket holds it, the hosts the hub knows, the
hub's parts checked, and signed work published for a host. The command line (`fleet`, `doctor`)
and the agent's fleet (station/fleet.py) call these; none of them constructs a hub (build.py does).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from waystation import timeutil
from waystation.config import FLEET_HOST
from waystation.errors import FleetError, MalformedRequest
from waystation.station import AgentStation, FleetConsole
from waystation.station.ops import receipts, status, tasks

if TYPE_CHECKING:
    from waystation.adapters.fleet.layout import Part
    from waystation.config import FleetSettings
    from waystation.receipts.checkpoints import SigningKey

# A host writes its status every minute; one not heard from for over two and a half is stale.
STALE_AFTER_S = 150.0


async def host_status(station: AgentStation, host: str, published_seq: int) -> dict[str, Any]:
    """What the bucket holds for this host: the status op's answer, less what is local only."""
    full = await status.status(station)
    latest = await receipts.latest(station, 1)
    return {
        "host": host,
        "at": timeutil.iso(time.time()),
        "version": full["version"],
        "connectivity": full["connectivity"].get("state"),
        "queue": full["queue"],
        "model": full["model"],
        "last_receipt": {"id": latest[-1]["id"], "created_at": latest[-1].get("created_at")}
        if latest
        else None,
        "published_seq": published_seq,
    }


async def check(console: FleetConsole) -> list[Part]:
    """Connect, and set up each part of the hub as the agent does, each on its own (a part the hub
    refuses says why); FleetRefused where the account has no JetStream at all."""
    await console.hub.connect()
    return await console.hub.ensure()


async def hosts(console: FleetConsole, warn: Callable[[str], None]) -> list[dict[str, Any]]:
    """The hosts in the bucket, each with how long since it was heard and whether that is stale.
    Each other part of the hub set up as the hosts would: one the hub refuses is said to `warn` at
    once, where its absence would read "no hosts" (the bucket's own refusal is the error raised)."""
    from waystation.adapters.fleet.layout import HOSTS_BUCKET

    for part in await check(console):
        if part.name != HOSTS_BUCKET and (part.refused or part.note):
            warn(part.refused or part.note)
    found = await console.hub.statuses()
    now = time.time()
    listed = []
    for host, said in sorted(found.items()):
        at = said.get("at")
        try:
            age = max(0.0, now - timeutil.parse_iso(at)) if isinstance(at, str) else None
        except ValueError:
            age = None
        seen = None if age is None else round(age, 1)
        listed.append({**said, "host": host, "age_s": seen, "stale": age is None or age > STALE_AFTER_S})
    return listed


def where(settings: FleetSettings) -> str:
    """The hub, as an error may name it: its URL with the password masked."""
    from waystation.adapters.fleet.hub import safe_url

    return f"the hub at {safe_url(settings.url)}"


def check_host(host: str) -> None:
    """A host's name is one subject token ([fleet] host): MalformedRequest otherwise."""
    if not FLEET_HOST.fullmatch(host):
        raise MalformedRequest("HOST must be 1 to 64 letters, digits, _ or -")


def work(console: FleetConsole, host: str, tool: str, args: object, key: str | None) -> dict[str, Any]:
    """The body of work for `host`, checked as `POST /v1/tasks` checks a task (the same function:
    an unknown tool, or arguments its tool refuses, are an InputError here, not on the host)."""
    check_host(host)
    # The key is in the signed body, not only in the (unsigned) Nats-Msg-Id header: a copy of this
    # message published again under another id is the same task, never a second one.
    body: dict[str, Any] = {"tool": tool, "args": args, "idempotency_key": key or f"{host}-{uuid4().hex}"}
    tasks.request_task(console.tools, body)
    return body


async def submit(
    console: FleetConsole, host: str, body: dict[str, Any], signer: SigningKey
) -> tuple[dict[str, Any], str | None]:
    """Publish checked work (see `work`) to `waystation.HOST.work`, signed; (the stream's answer,
    a warning when the hub has never heard of the host: the work waits until one of that name takes it)."""
    from waystation.adapters.fleet.hub import work_subject
    from waystation.adapters.fleet.work import sign_work

    hub = console.hub
    msg_id = str(body["idempotency_key"])
    data = json.dumps(body).encode()
    await hub.connect()
    await hub.ensure()  # the operator's user makes the hub's parts; a host's may not (README)
    try:
        seen = host in await hub.statuses()
    except FleetError as exc:
        warning: str | None = f"cannot tell whether the hub knows host {host}: {exc.message}"
    else:
        warning = (
            None
            if seen
            else (
                f"the hub has never seen host {host}: the work waits in the stream until a host of "
                "that name ([fleet] host) takes it"
            )
        )
    ack = await hub.publish(work_subject(host), data, msg_id, sign_work(data, signer))
    answer = {"host": host, "msg_id": msg_id, "stream_seq": ack.seq, "duplicate": ack.duplicate}
    return answer, warning
