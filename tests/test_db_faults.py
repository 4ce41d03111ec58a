"""The database under faults: garbage and damaged files, a newer schema, read-only files and
filesystems, a lock held by someone else, and a full disk. Never a silent reset, never a lost ack."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from waystation import db as dbmod
from waystation.config import QueueSettings
from waystation.db import SCHEMA_VERSION, Database, translate
from waystation.errors import (
    DatabaseCorrupt,
    DatabaseError,
    DatabaseLocked,
    DatabaseReadOnly,
    DatabaseTooNew,
    DiskFull,
)
from waystation.queue.store import TaskStore
from waystation.queue.tasks import NewTask, Task
from waystation.receipts.chain import verify_database

SETTINGS = QueueSettings()
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _task(i: int, pad: int = 0, prefix: str = "t") -> NewTask:
    args = {"url": f"https://faults.test/{i}", "json": {"pad": "x" * pad}}
    return NewTask("http_request", args, "faults.test", idempotency_key=f"{prefix}-{i}")


def _wal_size(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _make_database(path: Path, n: int, pad: int = 0) -> list[str]:
    """A real database with `n` tasks and a cancelled one's receipt, folded back from the WAL."""
    async with await Database.open(path) as db:
        store = TaskStore(db, SETTINGS)
        ids = [(await store.enqueue(_task(i, pad)))[0].id for i in range(n)]
        await store.cancel(ids[0])
        await db.checkpoint()
    assert _wal_size(path) == 0, "the WAL was not folded back into the database file"
    return ids


# --- translation by result code ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (5, DatabaseLocked),  # BUSY
        (5 | (3 << 8), DatabaseLocked),  # BUSY_TIMEOUT: extended codes keep the primary in the low byte
        (6, DatabaseLocked),  # LOCKED
        (8, DatabaseReadOnly),  # READONLY
        (8 | (2 << 8), DatabaseReadOnly),  # READONLY_CANTLOCK
        (11, DatabaseCorrupt),  # CORRUPT
        (26, DatabaseCorrupt),  # NOTADB
        (13, DiskFull),  # FULL
        (10 | (4 << 8), DatabaseError),  # IOERR_WRITE
        (1, DatabaseError),  # ERROR
    ],
)
def test_translate_chooses_by_result_code(tmp_path: Path, code: int, kind: type[DatabaseError]) -> None:
    exc = sqlite3.OperationalError("the message text is never consulted")
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    exc.sqlite_errorname = "SQLITE_SOMETHING"  # type: ignore[attr-defined]
    path = tmp_path / "x.db"
    translated = translate(exc, path)
    assert type(translated) is kind
    assert str(path) in str(translated)
    assert translated.http_status >= 500


def test_a_real_read_only_error_translates(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        with pytest.raises(sqlite3.Error) as info:
            conn.execute("INSERT INTO t VALUES (1)")
        assert isinstance(translate(info.value, path), DatabaseReadOnly)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA query_only = ON")
        with pytest.raises(sqlite3.Error) as info:
            conn.execute("INSERT INTO t VALUES (1)")
        assert isinstance(translate(info.value, path), DatabaseReadOnly)


# --- files that are not (or no longer) a database ------------------------------------------------


@pytest.mark.parametrize("check", [False, True])
async def test_random_bytes_are_reported_corrupt_and_left_alone(tmp_path: Path, check: bool) -> None:
    path = tmp_path / "waystation.db"
    path.write_bytes(random.Random(20261122).randbytes(64 * 1024))
    before = _digest(path)
    with pytest.raises(DatabaseCorrupt) as info:
        await Database.open(path, check=check)
    assert str(path) in str(info.value)
    assert info.value.code == "database_corrupt"
    assert path.exists() and _digest(path) == before, "the damaged file must not be reset"


async def test_a_text_file_is_reported_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "waystation.db"
    path.write_text("these are my notes, not a database\n" * 200)
    before = _digest(path)
    with pytest.raises(DatabaseCorrupt) as info:
        await Database.open(path)
    assert str(path) in str(info.value)
    assert _digest(path) == before


async def test_a_database_path_at_dev_null_is_refused_as_no_file(tmp_path: Path) -> None:
    """`/dev/null` opens, then fails its first sync (SQLITE_IOERR_FSYNC): it was blamed on a full
    disk. It is a device, said as such, and nothing is written to it."""
    path = tmp_path / "waystation.db"
    path.symlink_to("/dev/null")
    with pytest.raises(DatabaseError) as info:
        await Database.open(path)
    message = info.value.message
    assert type(info.value) is DatabaseError and "full" not in message
    assert str(path) in str(info.value) and "not a file" in message


def test_an_io_error_names_its_kind_and_blames_no_full_disk(tmp_path: Path) -> None:
    exc = sqlite3.OperationalError("disk I/O error")
    exc.sqlite_errorcode = sqlite3.SQLITE_IOERR_FSYNC  # type: ignore[attr-defined]
    exc.sqlite_errorname = "SQLITE_IOERR_FSYNC"  # type: ignore[attr-defined]
    translated = translate(exc, tmp_path / "x.db")
    assert "SQLITE_IOERR_FSYNC" in translated.message and "full" not in translated.message


async def _open_and_read_everything(path: Path, check: bool) -> None:
    async with await Database.open(path, check=check) as db:
        store = TaskStore(db, SETTINGS)
        await db.fetchall("SELECT * FROM tasks")
        await db.fetchall("SELECT * FROM receipts")
        await store.counts()
        await verify_database(db)


@pytest.mark.parametrize("check", [True, False])
async def test_a_truncated_database_is_an_error_not_a_reset(tmp_path: Path, check: bool) -> None:
    path = tmp_path / "waystation.db"
    await _make_database(path, 300, pad=600)
    size = path.stat().st_size
    assert size > 64 * 1024
    os.truncate(path, size // 2)
    before = _digest(path)
    with pytest.raises(DatabaseCorrupt) as info:
        await _open_and_read_everything(path, check)
    assert str(path) in str(info.value)
    assert path.stat().st_size == size // 2 and _digest(path) == before, "the damaged file was changed"


async def test_quick_check_catches_damage_inside_a_page(tmp_path: Path) -> None:
    path = tmp_path / "waystation.db"
    await _make_database(path, 300, pad=600)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'tasks'").fetchone()[0]
    with path.open("r+b") as f:  # scribble over the tasks table's root b-tree page header
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * 64)
    with pytest.raises(DatabaseCorrupt):
        await _open_and_read_everything(path, True)


async def test_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "waystation.db"
    ids = await _make_database(path, 3)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(DatabaseTooNew) as info:
        await Database.open(path)
    assert str(path) in str(info.value)
    assert "upgrade" in str(info.value)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert {r[0] for r in conn.execute("SELECT id FROM tasks")} == set(ids)


async def test_an_older_schema_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "waystation.db"
    ids = await _make_database(path, 3)
    async with await Database.open(path, check=True) as db:
        version = await db.fetchone("PRAGMA user_version")
        assert version is not None and version[0] == SCHEMA_VERSION
        assert {t.id for t in await TaskStore(db, SETTINGS).list()} == set(ids)


# --- read-only -----------------------------------------------------------------------------------

READ_ONLY_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from waystation.config import QueueSettings
    from waystation.db import Database
    from waystation.queue.store import TaskStore
    from waystation.queue.tasks import NewTask

    async def main(path):
        out = {}
        try:
            db = await Database.open(Path(path))
        except Exception as exc:
            out["open"] = type(exc).__name__
            out["message"] = str(exc)
        else:
            out["open"] = "ok"
            try:
                out["tasks"] = len(await db.fetchall("SELECT id FROM tasks"))
                await TaskStore(db, QueueSettings()).enqueue(NewTask("http_request", {}, "h"))
                out["write"] = "ok"
            except Exception as exc:
                out["write"] = type(exc).__name__
                out["message"] = str(exc)
            finally:
                await db.close()
        print(json.dumps(out))

    asyncio.run(main(sys.argv[1]))
    """
)


def _run_without_root_powers(path: Path) -> dict[str, str]:
    """Open `path` in a child process that file permissions apply to, even when we are root."""
    command = [sys.executable, "-c", READ_ONLY_CHILD, str(path)]
    if IS_ROOT:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, where chmod does not stop writes, and setpriv is not available")
        # Root without CAP_DAC_OVERRIDE obeys file modes like any other user.
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("directory_too", [False, True], ids=["file", "file-and-directory"])
async def test_a_read_only_database_is_reported_and_left_read_only(
    tmp_path: Path, directory_too: bool
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    path = home / "waystation.db"
    ids = await _make_database(path, 4)
    before = _digest(path)
    path.chmod(0o444)
    if directory_too:
        home.chmod(0o555)
    try:
        result = _run_without_root_powers(path)
        mode = path.stat().st_mode & 0o777
    finally:
        home.chmod(0o755)
    if result["open"] == "ok":
        assert result["tasks"] == len(ids), "reads still work"
        assert result["write"] == "DatabaseReadOnly", result
    else:
        assert result["open"] == "DatabaseReadOnly", result
    assert str(path) in result["message"]
    assert mode & 0o222 == 0, f"opening made a read-only database writable (mode is now {mode:o})"
    assert _digest(path) == before


@contextlib.contextmanager
def _read_only_bind_mount(source: Path, target: Path) -> Iterator[None]:
    if not IS_ROOT:
        pytest.skip("a read-only bind mount needs root")
    target.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        remounted = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(target)], capture_output=True, check=False
        )
        if remounted.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {remounted.stderr.decode().strip()}")
        yield
    finally:
        subprocess.run(["umount", str(target)], check=True)


async def test_a_read_only_filesystem_is_reported_as_read_only(tmp_path: Path) -> None:
    """The root-proof variant: not even root can write to a read-only mount."""
    source = tmp_path / "source"
    source.mkdir()
    ids = await _make_database(source / "waystation.db", 4)
    before = _digest(source / "waystation.db")
    target = tmp_path / "ro"
    with _read_only_bind_mount(source, target):
        path = target / "waystation.db"
        with pytest.raises(DatabaseReadOnly) as info:
            await Database.open(path)
        assert str(path) in str(info.value)
        assert sorted(os.listdir(target)) == ["waystation.db"]
    assert _digest(source / "waystation.db") == before
    async with await Database.open(source / "waystation.db") as db:  # writable again once remounted
        store = TaskStore(db, SETTINGS)
        assert {t.id for t in await store.list()} == set(ids)
        assert (await store.enqueue(_task(100)))[1]


# --- a lock held by another connection -----------------------------------------------------------


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(dbmod, "BUSY_TIMEOUT_MS", 150)
    return 150


@pytest.fixture
async def db(tmp_path: Path, short_busy_timeout: int) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "waystation.db")
    try:
        yield database
    finally:
        await database.close()


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=5)) as other:
        other.execute("BEGIN EXCLUSIVE")
        try:
            yield other
        finally:
            other.execute("ROLLBACK")


async def test_a_held_lock_is_database_locked_and_loses_nothing(db: Database) -> None:
    store = TaskStore(db, SETTINGS)
    acknowledged = [(await store.enqueue(_task(i)))[0].id for i in range(5)]
    with _exclusive_lock(db.path):
        with pytest.raises(DatabaseLocked) as info:
            await store.enqueue(_task(100))
        assert str(db.path) in str(info.value)
        assert info.value.code == "database_locked"
        # every write of a batch fails together, and none of it is committed
        results = await asyncio.gather(
            *(store.enqueue(_task(200 + i)) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, DatabaseLocked) for r in results), results
        with pytest.raises(DatabaseLocked):
            await store.lease(4, {}, 2)
        # WAL readers are not blocked by the writer's lock
        assert (await store.counts())["pending"] == 5
    _, created = await store.enqueue(_task(100))
    assert created, "the refused write was not half-kept"
    stored = {t.id: t for t in await store.list(limit=1000)}
    assert set(acknowledged) <= set(stored)
    assert {t.idempotency_key for t in stored.values()} == {f"t-{i}" for i in (0, 1, 2, 3, 4, 100)}
    assert len(await store.lease(10, {}, 10)) == 6


async def test_a_lock_held_by_another_process(db: Database) -> None:
    store = TaskStore(db, SETTINGS)
    first, _ = await store.enqueue(_task(1))
    holder = textwrap.dedent(
        """
        import sqlite3, sys
        conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)
        conn.execute("BEGIN EXCLUSIVE")
        print("locked", flush=True)
        sys.stdin.readline()
        conn.execute("ROLLBACK")
        conn.close()
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        holder,
        str(db.path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"locked"
        with pytest.raises(DatabaseLocked):
            await store.cancel(first.id)
        await proc.communicate(b"release\n")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    assert (await store.get(first.id)).state == "pending"
    cancelled, receipt = await store.cancel(first.id)
    assert cancelled.state == "cancelled" and receipt["task_id"] == first.id
    assert (await verify_database(db)).ok


# --- a full disk ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _small_tmpfs(target: Path, size: str) -> Iterator[Path]:
    if not IS_ROOT:
        pytest.skip("mounting a small tmpfs needs root")
    target.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(target)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield target
    finally:
        done = subprocess.run(["umount", str(target)], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(target)], check=True)


async def test_a_full_disk_keeps_every_acknowledged_task(tmp_path: Path) -> None:
    with _small_tmpfs(tmp_path / "small", "512k") as mount:
        filler = mount / "filler"
        filler.write_bytes(b"f" * (160 * 1024))
        path = mount / "waystation.db"
        acknowledged: list[Task] = []
        async with await Database.open(path) as db:
            store = TaskStore(db, SETTINGS)
            with pytest.raises(DiskFull) as info:
                for i in range(5000):
                    task, created = await store.enqueue(_task(i, pad=1500))
                    assert created
                    acknowledged.append(task)
                    if i % 4 == 0:
                        await store.cancel(task.id)
            assert str(path) in str(info.value)
            assert info.value.http_status == 507
            assert len(acknowledged) > 3, "the disk filled before the test could write anything"

            for task in acknowledged:
                assert (await store.get(task.id)).args == task.args
            assert (await verify_database(db)).ok

            filler.unlink()
            after, created = await store.enqueue(_task(9999, pad=100))
            assert created
            await store.cancel(after.id)
            acknowledged.append(after)

        async with await Database.open(path, check=True) as db:
            store = TaskStore(db, SETTINGS)
            stored = {t.id for t in await store.list(limit=100_000)}
            assert {t.id for t in acknowledged} <= stored
            assert (await verify_database(db)).ok
