"""A turn's end, committed once: its receipt, the tasks it parked and its row in one transaction,
then each parked task and the finished turn announced. Every way a turn ends (an answer, a refusal,
a timeout, a failure, a deferral) goes through here, so none of them can leave a receipt without
its tasks or a row still `running`.
"""

from __future__ import annotations

import sqlite3
import time

from waystation import contract
from waystation.db import Database
from waystation.ports import Announce
from waystation.queue.store import TaskStore
from waystation.queue.tasks import Task
from waystation.receipts import chain
from waystation.receipts.chain import ReceiptDraft, RouteInfo, Usage
from waystation.station.turns.progress import Progress
from waystation.station.turns.records import TurnRow, get_turn, save_turn
from waystation.station.turns.request import TurnRequest, TurnResult


async def finish_turn(
    db: Database,
    store: TaskStore,
    announce: Announce,
    turn_id: str,
    request: TurnRequest,
    progress: Progress,
    route: RouteInfo,
    status: contract.ReceiptStatus,
    reason: str | None,
    started: float,
    turn_state: str | None = None,
) -> TurnResult:
    """Commit the receipt, the parked tasks and the turn's row together."""
    draft = ReceiptDraft(
        kind="turn",
        status=status,
        reason=reason,
        route=route,
        usage=Usage(progress.prompt_tokens, progress.completion_tokens),
        credits_used=0,
        duration_ms=int((time.perf_counter() - started) * 1000),
        turn_id=turn_id,
        deferred_task_ids=tuple(progress.deferred),
        cold_load_ms=progress.cold_load_ms,
        model_answered=progress.model_answered,
        telemetry=progress.telemetry,
    )
    row = TurnRow(
        turn_state or status,
        request.to_json(),
        progress.messages,
        progress.deferred,
        progress.steps,
        route=route.name,
        model=route.model or request.model,
        text=progress.text,
        reason=reason,
        tool_calls=progress.tool_calls,
    )

    def op(conn: sqlite3.Connection) -> tuple[contract.Receipt, list[Task]]:
        parked = []
        for new in progress.parked:
            task, created = store.insert(conn, new)
            if created:
                parked.append(task)
        save_turn(conn, turn_id, row)
        return chain.append(conn, draft), parked

    receipt, parked = await db.write(op)
    for task in parked:  # as every committed task is: the flusher hears of it and wakes
        announce.task_changed(task.to_json())
    result = TurnResult(
        turn_id=turn_id,
        text=progress.text,
        route=route.name,
        receipt_id=receipt["id"],
        status=status,
        tool_calls=progress.tool_calls,
        deferred_task_ids=list(progress.deferred),
        usage=draft.usage,
        model=route.model,
        model_answered=progress.model_answered,
        finish_reason=progress.finish_reason,
    )
    turn = await get_turn(db, turn_id)
    announce.turn_finished({**result.to_json(), **turn}, receipt, progress.resumed)
    return result
