"""`waystation events`: follow the agent's event stream, across restarts and dropped streams."""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from waystation.cli.common import JsonFlag

if TYPE_CHECKING:
    from waystation.cli.client import AgentClient

RETRY_FIRST_S = 0.2  # the first wait for an agent that went away; doubling up to
RETRY_MAX_S = 5.0
# Failures that mean "the agent is not there (yet)": wait and reconnect. Any other error answer
# is the agent refusing, and ends the command.
AWAY_CODES = frozenset({"agent_not_running", "agent_unreachable", "agent_timeout"})


def events(as_json: JsonFlag = False) -> None:
    """Follow the agent's event stream (connectivity, task, turn, receipt) until Ctrl-C.

    One readable line per event: time, kind and a summary; `--json` prints each event as one
    JSON line, `{"event": KIND, "data": {...}}`. Needs the running agent (exit 3 without it).
    When the stream ends (the agent restarts, or drops a reader that fell behind) it reconnects,
    resuming after the last event printed, so none is missed or printed twice; stderr says once
    when the agent goes away and again when it is back.

    ```
    waystation events --json
    ```
    """
    from waystation.cli.client import AgentClient
    from waystation.config import Paths

    client = AgentClient(Paths.resolve().socket)
    try:
        follow_events(client, lambda kind, data: _print_event(kind, data, as_json))
    except KeyboardInterrupt:
        return
    finally:
        client.close()


def _print_event(kind: str, data: Any, as_json: bool) -> None:
    if as_json:
        line = json.dumps({"event": kind, "data": data}, separators=(",", ":"))
    else:
        line = event_line(kind, data)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _note(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def follow_events(
    client: AgentClient,
    emit: Callable[[str, Any], None],
    sleep: Callable[[float], None] | None = None,
    note: Callable[[str], None] = _note,
) -> None:
    """Print (`emit(kind, data)`) the agent's events for good, across restarts and dropped streams.

    The first connection's failure is raised (exit 3 when no agent runs); after the agent has been
    reached once, a lost agent is waited for with a growing pause and the stream resumed with
    `Last-Event-ID`. An event at or before the last one printed is skipped. If the agent's process
    went away before any event was printed, the next one is read from its first event: event ids
    start at the agent's boot time in microseconds, so resuming after the moment of the first
    connection is every event of a process started since."""
    import time

    from waystation.errors import WaystationError

    pause = time.sleep if sleep is None else sleep
    last_id: int | None = None
    since: int | None = None  # when the agent was first reached, as an event id
    reached = away = False
    delay = RETRY_FIRST_S

    def opened() -> None:
        nonlocal since, reached, away, delay
        if since is None:
            since = int(time.time() * 1_000_000)
        reached = True
        delay = RETRY_FIRST_S
        if away:
            away = False
            note("reconnected")

    while True:
        got = False
        try:
            for ident, kind, data in client.follow_events(last_id, on_open=opened):
                if ident is not None:
                    if last_id is not None and ident <= last_id:
                        continue  # seen already (a server replaying what we had)
                    last_id = ident
                got = True
                emit(kind, data)
        except WaystationError as exc:
            if not reached or (exc.code not in AWAY_CODES and exc.http_status < 500):
                raise
            if exc.code == "agent_not_running" and last_id is None:
                last_id = since  # no process listens: the next one boots after we first connected
            if not away:
                away = True
                note("agent went away; reconnecting…")
        if got:
            continue  # the stream ended after serving events: reconnect at once
        pause(delay)
        delay = min(delay * 2, RETRY_MAX_S)


def _clock(data: dict[str, Any], *keys: str) -> str:
    for key in keys:
        value = data.get(key)
        if isinstance(value, str):
            try:
                when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return when.astimezone().strftime("%H:%M:%S")
    return datetime.datetime.now().strftime("%H:%M:%S")


def event_line(kind: str, data: Any) -> str:
    """One readable line: local time, kind, and what happened."""
    if not isinstance(data, dict):
        return f"{datetime.datetime.now():%H:%M:%S} {kind:<12} {data}"
    if kind == "task":
        summary = f"{data.get('id')} {data.get('tool')} {data.get('state')} (attempts {data.get('attempts')})"
        if data.get("last_error"):
            summary += f": {data['last_error']}"
        when = _clock(data, "updated_at", "created_at")
    elif kind == "receipt":
        route = data.get("route") or {}
        summary = f"{data.get('id')} {data.get('kind')} {data.get('status')} via {route.get('name')}"
        if data.get("reason"):
            summary += f": {data['reason']}"
        when = _clock(data, "created_at")
    elif kind == "turn":
        usage = data.get("usage") or {}
        summary = (
            f"{data.get('turn_id')} on {data.get('route')} {data.get('status')}, "
            f"{usage.get('completion_tokens', 0)} tokens"
        )
        if data.get("deferred_task_ids"):
            summary += f", {len(data['deferred_task_ids'])} parked"
        if data.get("resumed"):
            summary += " (resumed)"
        when = _clock(data)
    elif kind == "connectivity":
        summary = f"{data.get('state')} (mode {data.get('mode')})"
        when = _clock(data, "since")
    else:
        summary = json.dumps(data, separators=(",", ":"))[:200]
        when = _clock(data)
    return f"{when} {kind:<12} {' '.join(summary.split())}"
