"""A task as the queue keeps it (Task, a row of the `tasks` table) and as a caller asks for one
(NewTask): frozen records with explicit conversion to and from SQLite rows and the contract's JSON.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from waystation import contract, timeutil
from waystation.queue.policy import TaskState
from waystation.receipts.chain import RouteInfo
from waystation.redact import shown_args

# What a listed task (`GET /v1/tasks`, `queue ls`) and a task event say of the arguments and the
# answer: where it goes and how it stands. The bodies (a payload, an answer's body: megabytes
# each) are for `GET /v1/tasks/{id}`, as `docker ps` lists and `docker inspect` shows.
LISTED_ARGS = ("method", "url", "server", "tool")
LISTED_RESULT = ("status", "isError")


@dataclass(frozen=True)
class Task:
    id: str
    tool: str
    args: dict[str, Any]
    idempotency_key: str
    host: str
    state: TaskState
    attempts: int
    net_failures: int
    next_attempt_at: float
    lease_expires_at: float | None
    last_error: str | None
    result: dict[str, Any] | None
    created_at: float
    updated_at: float
    expires_at: float
    turn_id: str | None
    # The destination's id for the call, once it took it as a task of its own (an MCP server's
    # task): the task's deliveries then ask after that task instead of sending the call again.
    remote_task: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Task:
        return cls._of(row, json.loads(row["args"]), json.loads(row["result"]) if row["result"] else None)

    @classmethod
    def from_summary_row(cls, row: sqlite3.Row) -> Task:
        """A task listed: a row of SUMMARY_COLUMNS, its args and result the listed fields only."""
        args = _picked(row["listed_args"], LISTED_ARGS)
        result = _picked(row["listed_result"], LISTED_RESULT) if row["has_result"] else None
        return cls._of(row, args, result)

    @classmethod
    def _of(cls, row: sqlite3.Row, args: dict[str, Any], result: dict[str, Any] | None) -> Task:
        return cls(
            id=row["id"],
            tool=row["tool"],
            args=args,
            idempotency_key=row["idempotency_key"],
            host=row["host"],
            state=TaskState(row["state"]),
            attempts=row["attempts"],
            net_failures=row["net_failures"],
            next_attempt_at=row["next_attempt_at"],
            lease_expires_at=row["lease_expires_at"],
            last_error=row["last_error"],
            result=result,
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            expires_at=row["expires_at"],
            turn_id=row["turn_id"],
            remote_task=row["remote_task"],
        )

    def to_json(self) -> contract.Task:
        """The contract's task object."""
        return {
            "id": self.id,
            "tool": self.tool,
            "args": shown_args(self.args),  # credentials stay in the row, not in what is shown
            "idempotency_key": self.idempotency_key,
            "state": self.state.value,
            "attempts": self.attempts,
            "next_attempt_at": timeutil.iso(self.next_attempt_at) if self.state == "pending" else None,
            "last_error": self.last_error,
            "result": self.result,
            "created_at": timeutil.iso(self.created_at),
            "updated_at": timeutil.iso(self.updated_at),
            "expires_at": timeutil.iso(self.expires_at),
            "turn_id": self.turn_id,
        }

    @property
    def route(self) -> RouteInfo:
        """How a task's receipt names what ran: the tool, to its destination, with no credential."""
        return RouteInfo(name=self.tool, provider=self.host, auth_lane="none", cost_lane="local")


def _pick(column: str, names: tuple[str, ...]) -> str:
    """SQL for the named fields of a JSON object column as one JSON array, in one parse of it
    (with several paths json_extract answers JSON, so true stays true, not SQLite's 1)."""
    paths = ", ".join(f"'$.{name}'" for name in names)
    return f"json_extract({column}, {paths}) AS listed_{column}"


# A listed task's columns: every one but the bodies, of which SQLite picks the listed fields (the
# bodies never reach Python: 400 tasks of 1 MB listed took the agent to 1.6 GB when they did).
SUMMARY_COLUMNS = (
    "id, tool, idempotency_key, host, state, attempts, net_failures, next_attempt_at, lease_expires_at,"
    f" last_error, created_at, updated_at, expires_at, turn_id, remote_task, {_pick('args', LISTED_ARGS)},"
    f" result IS NOT NULL AS has_result, {_pick('result', LISTED_RESULT)}"
)


def _picked(values: str | None, names: tuple[str, ...]) -> dict[str, Any]:
    picked = json.loads(values) if values else [None] * len(names)
    return {name: value for name, value in zip(names, picked, strict=True) if value is not None}


def listed(task: dict[str, Any]) -> dict[str, Any]:
    """A task object cut down as a listed one is (for what has the whole task in hand: events)."""
    args, result = task.get("args") or {}, task.get("result")
    if isinstance(result, dict):
        result = {name: result[name] for name in LISTED_RESULT if name in result}
    return {**task, "args": {name: args[name] for name in LISTED_ARGS if name in args}, "result": result}


@dataclass(frozen=True)
class NewTask:
    tool: str
    args: dict[str, Any]  # already validated by the tool
    host: str
    idempotency_key: str | None = None
    expires_at: float | None = None
    turn_id: str | None = None
    task_id: str | None = None  # chosen ahead when the caller must name the task before commit
    # A try the caller already made that got no answer (a turn's call while online): the task
    # starts as the flusher would have left it, its error saying why it waits.
    net_failures: int = 0
    last_error: str | None = None
    # A try the caller made that the destination took as a task of its own (a turn's MCP call
    # while online): the task starts running, waiting on it, asked after in first_poll_in_s.
    remote_task: str | None = None
    first_poll_in_s: float = 0.0
