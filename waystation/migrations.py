"""The database's schema, one migration at a time, and the refusals made before any of them runs:
a file written by a newer Waystation, or another application's SQLite database, is left as found.

Kept apart from db.py (connections, pragmas, group commit) because the schema grows with every
release while the connection handling does not. Migration 5 is the receipts' Merkle tree: its SQL
and backfill come from receipts/tree.py, which never imports the database back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import structlog

from waystation.errors import DatabaseForeign, DatabaseTooNew
from waystation.receipts import tree

log = structlog.get_logger(__name__)

# Each migration: SQL statements, or SQL then a function that fills what it made (same transaction).
Migration = str | tuple[str, Callable[[sqlite3.Connection], None]]
MIGRATIONS: list[Migration] = [
    # 1: the queue and the receipt chain.
    """
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        tool TEXT NOT NULL,
        args TEXT NOT NULL,                 -- canonical JSON of the validated arguments
        idempotency_key TEXT NOT NULL UNIQUE,
        host TEXT NOT NULL,                 -- destination host, for per-host concurrency
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        net_failures INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        lease_expires_at REAL,
        last_error TEXT,
        result TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        turn_id TEXT
    );
    CREATE INDEX tasks_due ON tasks (state, next_attempt_at);
    CREATE INDEX tasks_turn ON tasks (turn_id) WHERE turn_id IS NOT NULL;
    CREATE TABLE receipts (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        task_id TEXT,
        turn_id TEXT,
        body TEXT NOT NULL,                 -- the receipt's canonical JSON, hash included
        hash TEXT NOT NULL
    );
    CREATE INDEX receipts_task ON receipts (task_id) WHERE task_id IS NOT NULL;
    CREATE INDEX receipts_turn ON receipts (turn_id) WHERE turn_id IS NOT NULL;
    """,
    # 2: turns, kept so a turn that parked tool calls can resume with their real results.
    """
    CREATE TABLE turns (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,                -- parked | resuming | done | error
        request TEXT NOT NULL,              -- the turn request, JSON
        messages TEXT NOT NULL,             -- the conversation so far, JSON
        deferred TEXT NOT NULL,             -- {task_id: tool_call_id} of parked calls, JSON
        steps INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX turns_state ON turns (state)
    """,
    # 3: per-host lookups, so a saturated host's backlog cannot hide other hosts' due tasks.
    """
    CREATE INDEX tasks_host_due ON tasks (host, state, next_attempt_at)
    """,
    # 4: turns as a resource you can come back to: what ran, the answer, the calls it made.
    """
    ALTER TABLE turns ADD COLUMN route TEXT;
    ALTER TABLE turns ADD COLUMN model TEXT;
    ALTER TABLE turns ADD COLUMN text TEXT;
    ALTER TABLE turns ADD COLUMN reason TEXT;
    ALTER TABLE turns ADD COLUMN tool_calls TEXT NOT NULL DEFAULT '[]';
    CREATE INDEX turns_created ON turns (created_at)
    """,
    # 5: the receipts' Merkle tree (RFC 6962), for signed checkpoints and proofs.
    (tree.SCHEMA, tree.backfill),
    # 6: the fleet's outbox: how far each stream has the receipts (the last seq the hub acked).
    """
    CREATE TABLE fleet_outbox (
        name TEXT PRIMARY KEY,              -- receipts | checkpoints
        position INTEGER NOT NULL           -- receipts: the last seq acked, checkpoints: the tree size
    )
    """,
    # 7: the clocks when the deadlines were last known right (queue/clock.py): a wall clock set
    # while no agent ran is seen at the next start.
    """
    CREATE TABLE clock_mark (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        wall REAL NOT NULL,                 -- epoch seconds
        monotonic REAL NOT NULL,            -- seconds since boot
        boot TEXT                           -- the boot id, NULL where the system has none
    )
    """,
    # 8: a turn keeps its conversation once (in `messages`; the request keeps its settings), only
    # while it may need it (station/turns/records.py), and its prompt to show, cut to 1,000
    # characters; `compacted_at`: when retention dropped what a finished turn kept.
    """
    ALTER TABLE turns ADD COLUMN prompt TEXT;
    ALTER TABLE turns ADD COLUMN compacted_at REAL;
    UPDATE turns SET prompt = coalesce(nullif(json_extract(request, '$.prompt'), ''), (SELECT
        json_extract(m.value, '$.content') FROM json_each(turns.request, '$.messages') AS m
        WHERE json_extract(m.value, '$.role') = 'user' ORDER BY m.key DESC LIMIT 1), '');
    UPDATE turns SET prompt = substr(prompt, 1, 1000) || '…' WHERE length(prompt) > 1000;
    UPDATE turns SET messages = '[]' WHERE state = 'refused'
        OR (state NOT IN ('parked', 'resuming') AND json_extract(request, '$.client_tools') IS NOT NULL);
    UPDATE turns SET request = json_set(json_remove(request, '$.messages', '$.system'), '$.prompt', '')
    """,
    # 9: each MCP server's tools as last listed, so an offline turn is offered a remote server's
    # tools too; `source`: the url or command they were listed from (a changed one lists anew).
    """
    CREATE TABLE mcp_tools (
        server TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        tools TEXT NOT NULL,                -- JSON: [{"name", "description", "inputSchema"}]
        listed_at REAL NOT NULL
    )
    """,
    # 10: the id a destination gave a call it took as a task of its own (an MCP server's task),
    # kept with the task so that after any restart it is polled, never sent again. Such a task
    # stays `running`; while no delivery holds it (lease_expires_at NULL) it waits to be polled.
    """
    ALTER TABLE tasks ADD COLUMN remote_task TEXT;
    CREATE INDEX tasks_remote_due ON tasks (next_attempt_at) WHERE remote_task IS NOT NULL
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def too_new(path: Path, version: int) -> DatabaseTooNew:
    return DatabaseTooNew(
        path,
        f"schema version {version} is newer than this Waystation knows ({SCHEMA_VERSION}); "
        "upgrade waystation",
    )


def refuse_unknown_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a newer schema, and a SQLite file holding another application's tables.

    Version 0 means "no Waystation schema yet", which is right for a new, empty file. Without this
    check, version 0 with someone else's tables would be migrated over: our tables added to their
    database (or the migration failing half-way into a bare SQLITE_ERROR). Our migrations set the
    version in the same transaction that creates our tables, so ours is never at 0 with tables.
    """
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise too_new(path, version)
    if version == 0:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite!_%' ESCAPE '!' ORDER BY name"
            )
        ]
        if names:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise DatabaseForeign(
                path,
                f"another application's SQLite database (it holds {shown}), left untouched; "
                "move it elsewhere, or point WAYSTATION_HOME at another directory",
            )


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")  # another process may be migrating the same file
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise too_new(path, version)
        for number in range(version, SCHEMA_VERSION):
            migration = MIGRATIONS[number]
            sql, fill = migration if isinstance(migration, tuple) else (migration, None)
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if fill is not None:
                fill(conn)
            conn.execute(f"PRAGMA user_version = {number + 1}")
            log.info("database migrated", path=str(path), version=number + 1)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
