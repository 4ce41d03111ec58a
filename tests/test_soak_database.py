"""The real agent started on a database it must not use: damaged, garbage, too new, or foreign.

`waystation run` (the real process, as systemd starts it) must exit non-zero at once with one
`error:` line on stderr that names the file and says what to do, and leave the file exactly as it
found it: same bytes, same mode, no -wal/-shm left beside it. Never a silent reset, never someone
else's database adopted. The direct-to-database commands (`waystation queue ls` with no agent
running) must say the same. tests/test_db_faults.py covers these at the Database level; this is
the whole program, from the environment variable to the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support.agentproc import AGENT_COMMAND, Agent, agent_env

from waystation.config import QueueSettings
from waystation.db import SCHEMA_VERSION, Database
from waystation.queue.store import TaskStore
from waystation.queue.tasks import NewTask

pytestmark = [pytest.mark.soak, pytest.mark.slow]

REFUSAL_TIMEOUT_S = 30  # "promptly": generous for a loaded machine; a hang fails, it does not stall


async def waystation_database(path: Path, tasks: int) -> None:
    """A real Waystation database with `tasks` parked tasks, its WAL folded back into the file."""
    async with await Database.open(path) as db:
        store = TaskStore(db, QueueSettings())
        for i in range(tasks):
            args = {"url": f"https://refuse.test/{i}", "json": {"pad": "x" * 600}}
            await store.enqueue(NewTask("http_request", args, "refuse.test", idempotency_key=f"k-{i}"))
        await db.checkpoint()


def truncated(path: Path) -> None:
    asyncio.run(waystation_database(path, 300))
    size = path.stat().st_size
    assert size > 64 * 1024, size
    os.truncate(path, size // 2)  # the header survives; half the pages do not


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(20261122).randbytes(64 * 1024))


def newer_schema(path: Path) -> None:
    asyncio.run(waystation_database(path, 3))
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")


def foreign_with(table: str) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        # Another application's file: rollback journal (not WAL), user_version 0, its own data.
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            conn.execute(f"CREATE INDEX {table}_body ON {table} (body)")
            conn.executemany(f"INSERT INTO {table} (body) VALUES (?)", [(f"mine {i}",) for i in range(50)])
            conn.commit()
        path.chmod(0o644)  # its owner's choice of mode, which we must not "fix" either

    return build


# (builder, words the one error line must contain besides the path: what is wrong, what to do)
CASES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "truncated": (truncated, ("damaged", "backup")),
    "random-bytes": (random_bytes, ("not a waystation database", "backup")),
    "newer-schema": (newer_schema, (f"schema version {SCHEMA_VERSION + 1}", "upgrade waystation")),
    # Unrelated tables, and a table whose name is one of ours (the migration used to trip on it).
    "foreign-notes": (foreign_with("notes"), ("another application", "notes", "move it")),
    "foreign-tasks": (foreign_with("tasks"), ("another application", "tasks", "move it")),
}


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode & 0o7777


def side_files(home: Path) -> list[str]:
    return sorted(
        p.name for p in home.iterdir() if p.name.startswith("waystation.db") and p.name != "waystation.db"
    )


def waystation_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A `waystation` command with no agent running (it reads the database file itself)."""
    return subprocess.run(
        [*AGENT_COMMAND[:-1], *args],
        env=agent_env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=REFUSAL_TIMEOUT_S,
        check=False,
    )


def assert_one_clear_line(stderr: str, path: Path, words: tuple[str, ...], what: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{what}: expected one line on stderr, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert line.startswith("error: "), f"{what}: {line}"
    assert str(path) in line, f"{what}: the line does not name {path}: {line}"
    for word in words:
        assert word in line.lower(), f"{what}: {word!r} missing from: {line}"


@pytest.mark.parametrize("case", list(CASES))
def test_the_agent_refuses_a_database_it_must_not_use(home: Path, case: str) -> None:
    build, words = CASES[case]
    database = home / "waystation.db"
    build(database)
    before = fingerprint(database)

    try:
        done = subprocess.run(
            AGENT_COMMAND,
            env=agent_env(home, {"WAYSTATION_CONNECTIVITY__MODE": "offline"}),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=REFUSAL_TIMEOUT_S,  # on expiry the process is killed, and the test fails
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"`waystation run` kept running on a {case} database: {exc.stderr!r}") from None
    assert done.returncode != 0, f"`waystation run` started on a {case} database:\n{done.stderr}"
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert_one_clear_line(done.stderr, database, words, f"`waystation run` on a {case} database")
    assert fingerprint(database) == before, f"the {case} database was changed (bytes or mode)"
    assert side_files(home) == [], f"left beside the {case} database: {side_files(home)}"
    assert not (home / "waystation.sock").exists(), "a socket was bound for an agent that cannot run"

    # No agent now: `queue ls` reads the file directly, and must refuse it the same way.
    listed = waystation_cli(home, "queue", "ls")
    assert listed.returncode == 1, f"`queue ls` on a {case} database: {listed.returncode}\n{listed.stdout}"
    assert listed.stdout == "", f"`queue ls` printed a listing of a {case} database: {listed.stdout}"
    assert_one_clear_line(listed.stderr, database, words, f"`waystation queue ls` on a {case} database")
    assert fingerprint(database) == before, f"`queue ls` changed the {case} database"
    assert side_files(home) == [], side_files(home)

    # `waystation doctor` says the same on its database line (it must not pass a foreign file).
    doctor = waystation_cli(home, "doctor")
    assert doctor.returncode == 1, f"`doctor` on a {case} database: {doctor.returncode}\n{doctor.stdout}"
    (line,) = [line for line in doctor.stdout.splitlines() if line.split()[1:2] == ["database"]]
    assert line.startswith("fail") and str(database) in line, f"`doctor` on a {case} database: {line}"
    if case.startswith(("foreign", "newer")):
        assert all(word in line.lower() for word in words), f"`doctor` on a {case} database: {line}"
    assert fingerprint(database) == before, f"`doctor` changed the {case} database"

    if case.startswith("foreign"):  # and its owner still has it all
        with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert tables == {case.removeprefix("foreign-")}, f"tables were added: {tables}"
        assert mode == "delete", f"the foreign file was switched to {mode}"


def test_an_empty_file_is_a_new_database_not_a_foreign_one(home: Path) -> None:
    """The control for the foreign check: 0 bytes is SQLite's empty database, nothing to protect."""
    (home / "waystation.db").touch(mode=0o600)
    agent = Agent(home, {"WAYSTATION_CONNECTIVITY__MODE": "offline"})
    try:
        agent.start()
        assert agent.counts().get("pending") == 0
        assert agent.stop() == 0, agent.output()
    finally:
        agent.close()
    with contextlib.closing(sqlite3.connect(home / "waystation.db")) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
