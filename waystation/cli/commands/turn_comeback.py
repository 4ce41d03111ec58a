"""The turns you come back to: `waystation turn ls`, `turn show TURN_ID`, `turn wait TURN_ID`.

Each works through the agent when it runs and straight on the database when it does not. While
`turn wait` (and `turn PROMPT --wait`) waits on a terminal, a spinner on stderr says what the turn
is waiting for ("parked: waiting for the network (N calls)", "resuming"), so a parked turn is
never a blank screen; never with --json or when stderr is not a terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, get_args

from waystation import contract
from waystation.cli.common import progress, stderr_is_terminal, waystation
from waystation.errors import AgentNotRunning

if TYPE_CHECKING:
    from waystation.cli.common import Progress

# Exit codes of a turn's final state (the contract's): 5 = still going when we stopped waiting.
EXIT_FOR_STATE = {"ok": 0, "error": 1, "interrupted": 1, "refused": 4}
STILL_GOING = 5
WAITING = ("running", "parked", "resuming", "deferred")
LONGEST_PAUSE_S = 1.0  # between two looks at a waiting turn


class TurnReader(Protocol):
    """What following a turn needs of cli/client.py's Waystation."""

    via_agent: bool | None

    def get_turn(self, turn_id: str) -> contract.Turn: ...


def check_state(value: str | None) -> str | None:
    """--state of `turn ls`: one of the contract's turn states, else a usage error."""
    if value is None:
        return None
    import typer

    states = get_args(contract.TurnState)
    if value not in states:
        raise typer.BadParameter(f"{value!r} is not a turn state; use one of {', '.join(states)}")
    return value


def list_turns(state: str | None, limit: int, as_json: bool) -> int:
    from waystation.cli import render

    with waystation() as ws:
        turns = ws.list_turns(state, limit)
    render.output(turns, as_json, render.turns_table)
    return 0


def show_turn(turn_id: str, as_json: bool) -> int:
    from waystation.cli import render

    with waystation() as ws:
        found = ws.get_turn(turn_id)
    render.output(found, as_json, render.turn_detail)
    return 0


def wait_for_turn(turn_id: str, timeout: float | None, as_json: bool) -> int:
    """Follow the turn until it ends (or `timeout` passes: exit 5, it goes on), then print it."""
    from waystation.cli import render

    with waystation() as ws, progress("waiting for the turn…", stderr_is_terminal() and not as_json) as shown:
        found, ended = follow_turn(ws, turn_id, timeout, shown)
    if not ended:
        return _still_going(found, as_json)
    render.output(found, as_json, render.turn_detail)
    return EXIT_FOR_STATE.get(found["state"], 1)


def follow_turn(
    ws: TurnReader,
    turn_id: str,
    timeout: float | None,
    shown: Progress,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[contract.Turn, bool]:
    """(the turn, whether it ended): look at it, more slowly as it waits longer, saying on
    `shown` what it waits for, until it leaves running|parked|resuming|deferred or `timeout`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.1
    told = False
    while True:
        try:
            found = ws.get_turn(turn_id)
        except AgentNotRunning:  # it stopped under us: read the database until one runs again
            ws.via_agent = None
            continue
        if found["state"] not in WAITING:
            return found, True
        shown.update(waiting_text(found))
        if not ws.via_agent and not told:
            told = True
            shown.note(
                f"turn {turn_id} is {found['state']}; it goes on once an agent runs (`waystation run`)"
            )
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return found, False
        sleep(pause if left is None else min(pause, left))
        pause = min(pause * 2, LONGEST_PAUSE_S)


def waiting_text(turn: contract.Turn) -> str:
    """What the spinner says a turn that has not ended is doing."""
    from waystation.cli import render

    state = turn.get("state")
    if state == "parked":
        waiting = render.parked_calls(turn)
        if waiting:
            return f"parked: waiting for the network ({render.n_calls(waiting)})"
        return "resuming"  # its calls have answered: it resumes next
    if state == "deferred":
        return "deferred: waiting for the network"
    return "resuming" if state == "resuming" else "running"


def _still_going(turn: contract.Turn, as_json: bool) -> int:
    """We stop waiting; the turn goes on: its id (or object), and how to come back to it."""
    import json

    sys.stdout.write((json.dumps(turn) if as_json else turn["turn_id"]) + "\n")
    turn_id = turn["turn_id"]
    sys.stderr.write(
        f"turn {turn_id} is still {turn['state']}; `waystation turn wait {turn_id}` gets its answer\n"
    )
    return STILL_GOING
