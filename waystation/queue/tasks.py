"""A task as the queue keeps it (Task, a row of the `tasks` table) and as a caller asks for one
(NewTask): frozen records with explicit conversion to and from SQLite rows and the contract's JSON.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from waystation import timeutil
from waystation.queue.policy import TaskState
from waystation.receipts import RouteInfo
from waystation.redact import shown_args


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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Task:
        return cls(
            id=row["id"],
            tool=row["tool"],
            args=json.loads(row["args"]),
            idempotency_key=row["idempotency_key"],
            host=row["host"],
            state=TaskState(row["state"]),
            attempts=row["attempts"],
            net_failures=row["net_failures"],
            next_attempt_at=row["next_attempt_at"],
            lease_expires_at=row["lease_expires_at"],
            last_error=row["last_error"],
            result=json.loads(row["result"]) if row["result"] else None,
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            expires_at=row["expires_at"],
            turn_id=row["turn_id"],
        )

    def to_json(self) -> dict[str, Any]:
        """The contract's task object."""
        return {
            "id": self.id,
            "tool": self.tool,
            "args": shown_args(self.args),  # credentials stay in the row, not in what is shown
            "idempotency_key": self.idempotency_key,
            "state": str(self.state),
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
