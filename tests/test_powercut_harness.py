"""The power-cut harness (issue 24, item 1) loses exactly what a power cut loses, and so catches the
bugs that `kill -9` cannot: data not fsynced, a name whose directory was not fsynced, a torn last
write. SQLite with `synchronous=OFF` loses acknowledged commits under it; with FULL it loses none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.powercut.disk import LazyDisk

from waystation import durable


def write(path: Path, data: bytes, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def reboot(disk: LazyDisk, tear_seed: int | None = None) -> None:
    disk.cut(tear_seed)
    disk.mount()


def test_what_was_not_fsynced_is_lost_and_what_was_is_kept(lazy_disk: LazyDisk) -> None:
    root = lazy_disk.path
    write(root / "synced", b"kept" * 2000, sync=True)
    write(root / "unsynced", b"lost", sync=False)
    durable.fsync_dir(root)  # both names are durable; only one file's bytes are
    with (root / "synced").open("ab") as f:
        f.write(b"appended, never synced")
    cut = lazy_disk.cut()
    assert cut.files == 2 and cut.lost_names == 0
    lazy_disk.mount()
    assert (root / "synced").read_bytes() == b"kept" * 2000
    assert (root / "unsynced").read_bytes() == b""  # the empty receipts.pub of issue 25


def test_a_name_is_durable_once_its_directory_is_fsynced(lazy_disk: LazyDisk) -> None:
    root = lazy_disk.path
    durable.write_atomic(root / "config", "old\n")
    write(root / "created", b"data synced, name not", sync=True)
    write(root / ".config.tmp", b"new\n", sync=True)
    os.replace(root / ".config.tmp", root / "config")  # a rename without the directory's fsync
    (root / "sub").mkdir()
    reboot(lazy_disk)
    assert sorted(p.name for p in root.iterdir()) == ["config"]
    assert (root / "config").read_text() == "old\n"  # the rename is undone, the old file whole

    durable.write_atomic(root / "config", "new\n")
    assert durable.write_new(root / "key", "made once\n")
    assert not durable.write_new(root / "key", "another\n")
    reboot(lazy_disk)
    assert (root / "config").read_text() == "new\n" and (root / "key").read_text() == "made once\n"
    assert sorted(p.name for p in root.iterdir()) == ["config", "key"]  # no temporary file left


def test_a_torn_write_reaches_the_disk_up_to_a_sector_boundary(lazy_disk: LazyDisk) -> None:
    path = lazy_disk.path / "file"
    write(path, bytes(8192), sync=True)
    durable.fsync_dir(lazy_disk.path)
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, b"x" * 5000, 1000)
    os.close(fd)
    cut = lazy_disk.cut(tear_seed=7)
    lazy_disk.mount()
    data = path.read_bytes()
    # The kernel may send the write as several (at page boundaries): the last of them is torn.
    first, end = data.find(b"x"), data.rfind(b"x") + 1
    assert cut.torn and len(data) == 8192
    assert 1000 <= first < end < 6000 and end % 512 == 0 and (first == 1000 or first % 512 == 0)
    assert data[first:end] == b"x" * (end - first) and data.count(b"x") == end - first


WRITER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=" + sys.argv[2])
for i in range(int(sys.argv[3])):
    db.execute("INSERT INTO acked (n) VALUES (?)", (i,))  # committed: acknowledged
print("acknowledged", flush=True)
sys.stdin.read()  # until killed: no clean close, no final checkpoint
"""


def acknowledged_then_cut(disk: LazyDisk, synchronous: str, rows: int) -> int:
    path = disk.path / f"{synchronous}.db"
    import sqlite3

    with sqlite3.connect(path) as setup:  # the table itself made durable first
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE acked (n INTEGER)")
    setup.close()
    durable.fsync_dir(disk.path)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), synchronous, str(rows)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "acknowledged"
    writer.kill()
    writer.communicate(timeout=10)
    reboot(disk)
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kept: int = check.execute("SELECT COUNT(*) FROM acked").fetchone()[0]
    check.close()
    return kept


def test_sqlite_with_synchronous_off_loses_acknowledged_commits_under_it(lazy_disk: LazyDisk) -> None:
    """The harness catches a real bug: commits acknowledged with synchronous=OFF are lost by a
    power cut (kill -9 alone would keep them all); with FULL, as the agent runs, none are."""
    assert acknowledged_then_cut(lazy_disk, "OFF", 200) < 200
    assert acknowledged_then_cut(lazy_disk, "FULL", 200) == 200


def test_a_cut_works_while_another_mount_namespace_holds_a_copy_of_the_mount(lazy_disk: LazyDisk) -> None:
    """`ip netns exec` (the netns tests) and `unshare -m` copy every mount: the unmount here then
    leaves the file system alive there, and its loop must be ended for the cut (a hang, once)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("a mount namespace needs unshare, as root")
    write(lazy_disk.path / "file", b"unsynced", sync=False)
    durable.fsync_dir(lazy_disk.path)
    holder = subprocess.Popen(["unshare", "-m", "sleep", "60"])
    try:
        time.sleep(0.3)  # the namespace is made
        reboot(lazy_disk)
    finally:
        holder.kill()
        holder.wait()
    assert (lazy_disk.path / "file").read_bytes() == b""
