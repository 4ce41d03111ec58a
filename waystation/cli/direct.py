"""The command line's operations straight on the database, for when no agent runs.

Answers are the API's JSON objects. The database is shared safely with an agent that starts
meanwhile (see db.py); reads never create a database that does not exist yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from waystation.config import Paths, load_settings
from waystation.errors import DatabaseCorrupt, NotFound

if TYPE_CHECKING:
    from waystation.db import Database
    from waystation.queue.store import TaskStore

T = TypeVar("T")
PAGE = 1000


def quiet_logs() -> None:
    """Library log lines go to stderr, warnings and worse only: stdout belongs to the output."""
    from waystation import logs

    logs.configure(logging.WARNING)


class DirectStore:
    """One event loop for the store's life, so a database stays open across calls."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._runner: asyncio.Runner | None = None
        self._db: Database | None = None
        self._store: TaskStore | None = None

    def close(self) -> None:
        if self._runner is None:
            return
        try:
            if self._db is not None:
                self._runner.run(self._db.close())
        finally:
            self._runner.close()
            self._runner, self._db, self._store = None, None, None

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._runner is None:
            self._runner = asyncio.Runner()
        return self._runner.run(coro)

    def _open(self) -> tuple[Database, TaskStore]:
        if self._db is None or self._store is None:
            from waystation.db import Database
            from waystation.queue.store import TaskStore

            settings = load_settings(self.paths)
            quiet_logs()
            self._db = self._run(Database.open(self.paths.database))
            self._store = TaskStore(self._db, settings.queue)
        return self._db, self._store

    def _exists(self) -> bool:
        return self._db is not None or self.paths.database.exists()

    # --- tasks -------------------------------------------------------------------------------

    def add_task(self, tool: str, args: dict[str, Any], key: str | None) -> tuple[dict[str, Any], bool]:
        from waystation.adapters.tools import default_tools
        from waystation.queue.tasks import NewTask

        spec = default_tools().get(tool)
        valid = spec.validate(args)
        new = NewTask.for_tool(spec, valid, idempotency_key=key)
        _, store = self._open()
        task, created = self._run(store.enqueue(new))
        return task.to_json(), created

    def list_tasks(self, state: str | None, limit: int) -> list[dict[str, Any]]:
        if not self._exists():
            return []
        from waystation.queue.policy import TaskState

        _, store = self._open()
        tasks = self._run(store.list(TaskState(state) if state else None, limit))
        return [t.to_json() for t in tasks]

    def get_task(self, task_id: str) -> dict[str, Any]:
        if not self._exists():
            raise NotFound("task", task_id)
        _, store = self._open()
        return self._run(store.get(task_id)).to_json()

    def retry_task(self, task_id: str) -> dict[str, Any]:
        if not self._exists():
            raise NotFound("task", task_id)
        _, store = self._open()
        return self._run(store.retry(task_id)).to_json()

    def cancel_task(self, task_id: str) -> dict[str, Any]:
        if not self._exists():
            raise NotFound("task", task_id)
        _, store = self._open()
        task, _receipt = self._run(store.cancel(task_id))
        return task.to_json()

    # --- receipts ----------------------------------------------------------------------------

    def _receipts(self, read: Callable[[Database], Coroutine[Any, Any, T]]) -> T:
        """Run a read of waystation.receipts (the API's own), a bad stored body as one clear error."""
        db, _ = self._open()
        try:
            return self._run(read(db))
        except ValueError:  # a body that is not JSON: someone edited the table
            raise DatabaseCorrupt(
                self.paths.database,
                "a stored receipt is not valid JSON; `waystation receipts verify` names it",
            ) from None

    def receipts_after(self, after: str | None, limit: int) -> list[dict[str, Any]]:
        if not self._exists():
            if after is not None:
                raise NotFound("receipt", after)
            return []
        from waystation import receipts

        return self._receipts(lambda db: receipts.list_receipts(db, after, limit))

    def latest_receipts(self, limit: int) -> list[dict[str, Any]]:
        if not self._exists():
            return []
        from waystation import receipts

        return self._receipts(lambda db: receipts.latest_receipts(db, limit))

    def iter_receipts(self, after: str | None = None) -> Iterator[dict[str, Any]]:
        while True:
            page = self.receipts_after(after, PAGE)
            if not page:
                return
            yield from page
            after = page[-1]["id"]

    def get_receipt(self, receipt_id: str) -> dict[str, Any]:
        if not self._exists():
            raise NotFound("receipt", receipt_id)
        from waystation import receipts

        return self._receipts(lambda db: receipts.get_receipt(db, receipt_id))

    def verify_receipts(self) -> dict[str, Any]:
        from waystation import receipts

        if not self._exists():
            return receipts.Verification(True, 0).to_json()
        return self._receipts(receipts.verify_database).to_json()
