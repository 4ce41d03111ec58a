"""A FUSE pass-through file system that loses, on command, what was not fsynced (issue 24).

`kill -9` keeps every write that reached the kernel; a power cut keeps only what was fsynced.
LazyFS (what Jepsen uses) shows the difference by holding writes in its own cache until fsync.
This one writes through to its backing directory at once (reads stay simple and fast) and keeps,
instead, what each file and directory held when it was last synced (undo.py), so that a "drop"
can put it back.

After `fusermount3 -u`, the process reads one command on stdin: `keep` (everything stays), or
`drop` (every unsynced change is undone), or `drop tear SEED` (also: the last unsynced write is
kept up to a 512-byte sector boundary inside it, as a disk that lost power mid-write leaves it).
It then prints what it dropped as one JSON line and exits.

A cut without the unmount, for the many cheap cuts of tests/test_powercut_store.py: `cut` or
`cut tear SEED` on stdin while mounted, once every process writing on it is dead, drops the same
and answers with the same JSON line; the file system stays mounted, and the next cut counts from
there. `freeze N [WATCH]` while mounted sets a freeze point (below) until the next cut; `full on`
makes it a full disk (every write, create or growth fails with ENOSPC) until `full off`. The
kernel keeps no stale view of what was dropped: names and attributes are never cached
(entry_timeout and attr_timeout 0), and a file's pages are dropped at each open (no keep_cache).
Directory renames are not modelled (nothing the agent does renames one).

A freeze point puts the cut at an exact place: with `--freeze-at N`, the Nth operation (from 0)
on a file whose name holds `--watch` (or a directory fsync) and every change after it fail with
EIO, and `BACKING/frozen` appears: the power went just before that operation.

Run as `python -m support.powercut.lazyfs BACKING MOUNTPOINT [--freeze-at N --watch TEXT]`
(support/powercut/disk.py does).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import faulthandler
import json
import os
import queue
import signal
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mfusepy

from support.powercut.undo import Dropped, Undo

FILES, LIMBO = "files", "limbo"  # the backing directory's two rooms: what is mounted, what is kept
FROZEN = "frozen"  # the marker the freeze point leaves beside them


class LazyFS(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, backing: Path, freeze_at: int | None = None, watch: str = "") -> None:
        self.backing = backing
        self.undo = Undo(backing / FILES, backing / LIMBO)
        self.real = self.undo.real
        self.mutex = threading.Lock()  # not `lock`: that name is a FUSE operation
        self.writes = 0
        self.freeze_at, self.watch, self.counted, self.frozen = freeze_at, watch, 0, False
        self.marker = backing / FROZEN
        self.marker.unlink(missing_ok=True)
        self.full = False  # a full disk: what needs room (data, a new name) fails with ENOSPC

    @contextlib.contextmanager
    def _changing(
        self, *paths: str | None, dir_sync: bool = False, needs_room: bool = False
    ) -> Iterator[None]:
        """One change, under the mutex; refused (EIO) from the freeze point on, and (ENOSPC) on
        a full disk when it `needs_room`."""
        with self.mutex:
            if self.frozen:
                raise mfusepy.FuseOSError(errno.EIO)
            if needs_room and self.full:
                raise mfusepy.FuseOSError(errno.ENOSPC)
            if dir_sync or any(p is not None and self.watch in os.path.basename(p) for p in paths):
                if self.counted == self.freeze_at:
                    self.frozen = True
                    self.marker.touch()
                    raise mfusepy.FuseOSError(errno.EIO)
                self.counted += 1
            yield

    # --- reading --------------------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.fstat(fh) if fh is not None else os.lstat(self.real(path))
        attrs = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size")}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        if st.st_ino in self.undo.kept and not stat.S_ISDIR(st.st_mode):
            attrs["st_nlink"] -= 1  # SQLite warns of a file with several links
        return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self.real(path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self.real(path))

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self.real(path))
        names = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files")
        return {name: getattr(sv, name) for name in (*names, "f_flag", "f_frsize", "f_namemax")}

    def access(self, path: str, amode: int) -> int:
        if not os.access(self.real(path), amode):
            raise mfusepy.FuseOSError(errno.EACCES)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    # --- metadata taken as durable at once (not modelled) ---------------------------------------

    def chmod(self, path: str, mode: int) -> int:
        with self._changing(path):
            os.chmod(self.real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        with self._changing(path):
            os.chown(self.real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        with self._changing(path):
            os.utime(self.real(path), ns=times) if times else os.utime(self.real(path))
        return 0

    # --- names: durable once their directory is fsynced --------------------------------------------

    def mknod(self, path: str, mode: int, dev: int) -> int:
        with self._changing(path, needs_room=True):
            self.undo.changing_dir(path)
            os.mknod(self.real(path), mode, dev)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        with self._changing(path, needs_room=True):
            self.undo.changing_dir(path)
            os.mkdir(self.real(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        with self._changing(path):
            self.undo.changing_dir(path)
            os.rmdir(self.real(path))
        return 0

    def unlink(self, path: str) -> int:
        with self._changing(path):
            self.undo.changing_dir(path)
            os.unlink(self.real(path))
        return 0

    def symlink(self, target: str, source: str) -> int:
        with self._changing(target, needs_room=True):
            self.undo.changing_dir(target)
            os.symlink(source, self.real(target))
        return 0

    def rename(self, old: str, new: str) -> int:
        with self._changing(old, new):
            self.undo.changing_dir(old)
            self.undo.changing_dir(new)
            os.rename(self.real(old), self.real(new))
        return 0

    def link(self, target: str, source: str) -> int:
        with self._changing(target, source, needs_room=True):
            self.undo.changing_dir(target)
            os.link(self.real(source), self.real(target))
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self._changing(path, dir_sync=True):
            self.undo.synced_dir(path)
        return 0

    # --- data: durable once its file is fsynced -----------------------------------------------------

    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        with self._changing(path, needs_room=True):
            self.undo.changing_dir(path)
            return os.open(self.real(path), _backing(flags) | os.O_CREAT, mode)

    def open(self, path: str, flags: int) -> int:
        if not flags & os.O_TRUNC:
            return os.open(self.real(path), _backing(flags))
        with self._changing(path):
            fd = os.open(self.real(path), _backing(flags) & ~os.O_TRUNC)
            self._truncate(fd, self.real(path), 0)
            return fd

    def _truncate(self, fd: int, real: str | None, length: int) -> None:
        size = os.fstat(fd).st_size
        # Blocks cut off are kept; a file made longer notes the size to go back to.
        self.undo.changing_data(fd, real, min(length, size), size)
        os.ftruncate(fd, length)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        grows = length > os.stat(self.real(path)).st_size if fh is None else length > os.fstat(fh).st_size
        with self._changing(path, needs_room=grows):
            fd = os.open(self.real(path), os.O_RDWR) if fh is None else fh
            try:
                self._truncate(fd, self.real(path), length)
            finally:
                if fh is None:
                    os.close(fd)
        return 0

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        grows = offset + len(data) > os.fstat(fh).st_size  # a full disk still rewrites what it holds
        with self._changing(path, needs_room=grows):
            real = None if path is None else self.real(path)
            ino = self.undo.changing_data(fh, real, offset, offset + len(data))
            written = os.pwrite(fh, data, offset)
            self.undo.last_write = (ino, offset, written)
            self.writes += 1
        return written

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        # The backing file itself is not synced: only a cut of this file system is simulated.
        with self._changing(path):
            self.undo.synced_file(fh)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def cut(self, tear_seed: int | None) -> Dropped:
        """A power cut while mounted: what is unsynced undone now, and the undo state begun again."""
        with self.mutex:
            dropped = self.undo.drop(tear_seed)
            dropped.held_writes, dropped.counted, dropped.frozen = self.writes, self.counted, self.frozen
            self.undo.forget()
            self.undo = Undo(self.backing / FILES, self.backing / LIMBO)
            self.writes, self.counted, self.frozen, self.freeze_at = 0, 0, False, None
            self.marker.unlink(missing_ok=True)
            return dropped

    def fill(self, full: bool) -> None:
        with self.mutex:
            self.full = full

    def arm(self, freeze_at: int, watch: str) -> None:
        """A freeze point from now on, as --freeze-at and --watch set one at the mount."""
        with self.mutex:
            self.freeze_at, self.watch, self.counted, self.frozen = freeze_at, watch, 0, False
            self.marker.unlink(missing_ok=True)


def _commands(fs: LazyFS, final: queue.Queue[list[str]]) -> None:
    """stdin, on a thread beside the FUSE loop: `cut [tear SEED]`, `freeze N [WATCH]` or
    `full on|off` now (each answered with a JSON line); anything else (or the end of stdin) is
    for after the unmount."""
    for line in sys.stdin:
        command = line.split()
        if command[:1] == ["freeze"]:
            fs.arm(int(command[1]), command[2] if len(command) > 2 else "")
            answer: dict[str, Any] = {"armed": True}
        elif command[:1] == ["full"]:
            fs.fill(command[1:2] == ["on"])
            answer = {"full": fs.full}
        elif command[:1] == ["cut"]:
            answer = fs.cut(_tear_seed(command)).__dict__
        else:
            final.put(command)
            return
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    final.put([])


def _tear_seed(command: list[str]) -> int | None:
    return int(command[2]) if command[1:2] == ["tear"] else None


def _backing(flags: int) -> int:
    """The flags to open the backing file with: readable (the blocks a write changes are read
    first, to keep them), and without O_APPEND (the kernel gives each write its offset)."""
    if flags & os.O_ACCMODE == os.O_WRONLY:
        flags = flags & ~os.O_ACCMODE | os.O_RDWR
    return flags & ~os.O_APPEND


def main() -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # disk.py asks for the stacks of a hang
    parser = argparse.ArgumentParser()
    parser.add_argument("backing", type=Path)
    parser.add_argument("mountpoint")
    parser.add_argument("--freeze-at", type=int)
    parser.add_argument("--watch", default="")
    args = parser.parse_args()
    fs = LazyFS(args.backing, args.freeze_at, args.watch)
    final: queue.Queue[list[str]] = queue.Queue()
    threading.Thread(target=_commands, args=(fs, final), daemon=True).start()
    # One thread: nothing here blocks, and the GIL serialises the callbacks anyway. The loop ends
    # at the unmount, or at SIGTERM (libfuse's handler: fuse_main then returns an error code) when
    # another mount namespace still holds a copy of the mount (`ip netns exec`, `unshare -m`).
    with contextlib.suppress(RuntimeError):
        mfusepy.FUSE(
            fs,
            args.mountpoint,
            foreground=True,
            nothreads=True,
            fsname="lazyfs",
            default_permissions=True,
            entry_timeout=0,  # the kernel must not keep a name or a size a cut in place undid
            attr_timeout=0,
        )
    command = final.get()
    dropped = Dropped()
    if command[:1] == ["drop"]:
        dropped = fs.undo.drop(_tear_seed(command))
    dropped.held_writes, dropped.counted, dropped.frozen = fs.writes, fs.counted, fs.frozen
    fs.undo.forget()
    sys.stdout.write(json.dumps(dropped.__dict__) + "\n")


if __name__ == "__main__":
    main()
