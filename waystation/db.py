"""The one SQLite database: connections, pragmas and group commit (its schema: migrations.py).

Durability: the database runs in WAL mode with `synchronous=FULL`. In WAL, FULL syncs the WAL
file at every commit, so a transaction that returned from COMMIT survives both `kill -9` and power
loss. `NORMAL` would only sync at checkpoints: safe against a crashed process, but the last
acknowledged commits can vanish when the power goes. We acknowledge a task only after COMMIT, so
FULL is the level that keeps that promise. To stay fast anyway, concurrent writes are grouped into
one transaction (group commit): one fsync acknowledges every write in the batch.

Two processes (the agent, and the CLI writing directly when no agent runs) share the file safely:
every write transaction starts with `BEGIN IMMEDIATE` (it takes the write lock up front, so no
transaction fails half-way on a lock upgrade) and waits up to `busy_timeout` for the other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sqlite3
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from waystation import durable
from waystation.errors import (
    DatabaseCorrupt,
    DatabaseError,
    DatabaseLocked,
    DatabaseReadOnly,
    DiskFull,
    WaystationError,
)
from waystation.migrations import SCHEMA_VERSION, migrate, refuse_unknown_schema

__all__ = ["SCHEMA_VERSION", "Database", "refuse_non_file", "refuse_unknown_schema", "translate"]

log = structlog.get_logger(__name__)

T = TypeVar("T")
WriteOp = Callable[[sqlite3.Connection], T]

BUSY_TIMEOUT_MS = 5000
MAX_BATCH = 512

# SQLite primary result codes (the low byte of an extended code).
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 26


def translate(exc: sqlite3.Error, path: Path) -> DatabaseError:
    """A sqlite3 error as one of ours, chosen by SQLite's result code, never by message text."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in (_BUSY, _LOCKED):
        return DatabaseLocked(path, "locked by another process; try again, or stop the other writer")
    if code == _READONLY:
        return DatabaseReadOnly(path, "read-only: make the file and its directory writable")
    if code in (_CORRUPT, _NOTADB):
        return DatabaseCorrupt(
            path, "not a Waystation database or damaged; move it aside and restore from a backup"
        )
    if code == _FULL:
        return DiskFull(path, "disk full: free some space; nothing unacknowledged was kept")
    if code == _CANTOPEN:
        if not _writable(path):  # e.g. a read-only mount: WAL cannot even create its -shm file
            return DatabaseReadOnly(path, "read-only: make the file and its directory writable")
        return DatabaseError(path, "cannot open: check the path and its permissions")
    if code == _IOERR:
        # SQLite reports a full disk as SQLITE_FULL, never as an I/O error: this one is the file
        # system refusing a read, write or sync, and its extended name says which.
        name = getattr(exc, "sqlite_errorname", "SQLITE_IOERR")
        return DatabaseError(path, f"I/O error ({name}): check the file system and the disk it is on")
    return DatabaseError(path, f"SQLite error {getattr(exc, 'sqlite_errorname', type(exc).__name__)}")


def refuse_non_file(path: Path) -> None:
    """A database path that names a device, a directory or a pipe (`/dev/null`, a symlink to one)
    is refused by what it is: SQLite would open it and fail its first sync with an I/O error."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return  # made at first open
    except OSError as exc:
        raise DatabaseError(path, f"cannot be examined ({exc.strerror}): check the path") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a device or pipe, not a file"
        raise DatabaseError(
            path,
            f"is {kind}: the database must be a regular file; move it away or set WAYSTATION_HOME elsewhere",
        )


def _writable(path: Path) -> bool:
    """Whether we may write the file and create its -wal and -shm files beside it."""
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


class Database:
    """One writer thread fed by a group-commit loop, and a read-only aiosqlite connection beside it.

    Write ops are plain synchronous functions over the writer's sqlite3 connection, run on its one
    thread: a whole batch costs one hop to that thread and one fsync, not a hop per statement.
    """

    def __init__(
        self,
        path: Path,
        executor: concurrent.futures.ThreadPoolExecutor,
        writer: sqlite3.Connection,
        reader: aiosqlite.Connection,
    ) -> None:
        self.path = path
        self._executor = executor
        self._writer = writer
        self._reader = reader
        self._pending: asyncio.Queue[tuple[WriteOp[Any], asyncio.Future[Any]]] = asyncio.Queue()
        self._loop_task = asyncio.create_task(self._commit_loop(), name="db-group-commit")

    @classmethod
    async def open(cls, path: Path, *, check: bool = False) -> Database:
        """Open (creating if needed) and migrate; `check` also runs SQLite's quick_check."""
        durable.make_dirs(path.parent, 0o700)  # a new state directory lasts as long as its database
        refuse_non_file(path)
        loop = asyncio.get_running_loop()
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="waystation-db-writer")
        writer: sqlite3.Connection | None = None
        reader: aiosqlite.Connection | None = None
        try:
            writer = await loop.run_in_executor(executor, _open_writer, path, check)
            reader = await aiosqlite.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
            reader.row_factory = sqlite3.Row
            await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await reader.execute("PRAGMA query_only = ON")
        except BaseException as exc:
            if reader is not None:
                await _close_quietly(reader)
            if writer is not None:
                await loop.run_in_executor(executor, writer.close)
            executor.shutdown(wait=False)
            if isinstance(exc, sqlite3.Error):
                raise translate(exc, path) from None
            raise
        return cls(path, executor, writer, reader)

    async def close(self) -> None:
        self._loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        await _close_quietly(self._reader)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._writer.close)
        self._executor.shutdown(wait=True)

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def write(self, op: WriteOp[T]) -> T:
        """Run `op(conn)` in a write transaction, grouped with concurrent ones; return once committed.

        A WaystationError raised by `op` rolls back only that op (a savepoint) and is raised
        here; a database error fails the whole batch, and nothing of it was committed.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.put_nowait((op, future))
        return await future

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        try:
            # One hop to the reader's thread for the query and all its rows: as two (execute, then
            # fetchall), another coroutine's read ran between them inside this statement's read
            # transaction, on a snapshot older than a write it had just seen commit (a turn's
            # row read back missing, 2 in 1,000 children of tests/test_powercut_store.py).
            return list(await self._reader.execute_fetchall(sql, tuple(params)))
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from None

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def checkpoint(self) -> None:
        """Fold the WAL back into the database file (TRUNCATE keeps the WAL from growing)."""

        def run() -> None:
            self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        try:
            # The writer thread runs one thing at a time, so this never splits a batch.
            await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except sqlite3.Error as exc:
            raise translate(exc, self.path) from None

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._pending.get()]
            while not self._pending.empty() and len(batch) < MAX_BATCH:
                batch.append(self._pending.get_nowait())
            ops = [op for op, _ in batch]
            try:
                outcomes = await loop.run_in_executor(self._executor, self._commit, ops)
            except DatabaseError as failure:
                log.error("write batch failed", error=failure.message, size=len(batch))
                outcomes = [(None, failure)] * len(batch)
            for (_, future), (result, error) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue  # the caller went away; the write stands (it is idempotent by key)
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

    def _commit(self, ops: list[WriteOp[Any]]) -> list[tuple[Any, BaseException | None]]:
        """On the writer thread: one transaction, a savepoint per op, one COMMIT (one fsync)."""
        conn = self._writer
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    result = op(conn)
                except sqlite3.Error:
                    raise
                except Exception as exc:  # the op's own failure: undo it alone
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    if not isinstance(exc, WaystationError):
                        log.exception("write op failed")
                    outcomes.append((None, exc))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((result, None))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise translate(exc, self.path) from None
        return outcomes


def _open_writer(path: Path, check: bool) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # Before anything writes (switching to WAL rewrites the header, the chmod, the migrations):
        # a file that is not ours, or too new for us, must be refused exactly as it was found.
        refuse_unknown_schema(conn, path)
        row = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if row is None or row[0] != "wal":
            raise DatabaseError(path, f"could not enable WAL (journal_mode={row[0] if row else '?'})")
        conn.execute("PRAGMA synchronous = FULL")
        with contextlib.suppress(OSError):
            # Private to its owner, but never made writable: a read-only file stays read-only.
            os.chmod(path, os.stat(path).st_mode & 0o700)
        migrate(conn, path)
        if check:
            row = conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise DatabaseCorrupt(path, f"integrity check failed: {row[0] if row else '?'}")
    except BaseException:
        conn.close()
        raise
    return conn


async def _close_quietly(conn: aiosqlite.Connection) -> None:
    with contextlib.suppress(sqlite3.Error, ValueError):
        await conn.close()
