"""A FUSE pass-through file system that loses, on command, what was not fsynced (issue 24).

`kill -9` keeps every write that reached the kernel; a power cut keeps only what was fsynced.
LazyFS (what Jepsen uses) shows the difference by holding writes in its own cache until fsync.
This one writes through to its backing directory at once (reads stay simple and fast) and keeps,
instead, what each file and directory held when it was last synced, so that a "drop" can put it
back:

- a file's data: its size at the last fsync and, for each 4 KiB block written or cut off since,
  that block as it was (an undo log, so the cost is the unsynced writes, not the file's size);
- a directory's names: its listing at the first create, rename, link or removal in it since its
  last fsync (POSIX: a new or renamed name is durable only once its directory is fsynced);
  every file such a listing names is hard-linked into a hidden `limbo/` so that a name removed or
  renamed over can be put back.

After `fusermount3 -u`, the process reads one command on stdin: `keep` (everything stays), or
`drop` (every unsynced change is undone), or `drop tear SEED` (also: the last unsynced write is
kept up to a 512-byte sector boundary inside it, as a disk that lost power mid-write leaves it).
It then prints what it dropped as one JSON line and exits. Directory renames are not modelled
(nothing the agent does renames one).

Run as `python -m support.powercut.lazyfs BACKING MOUNTPOINT` (support/powercut/disk.py does).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import stat
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mfusepy

BLOCK = 4096
SECTOR = 512
FILES, LIMBO = "files", "limbo"  # the backing directory's two rooms: what is mounted, what is kept

Entry = tuple[str, int | str]  # ("file" | "dir", inode) or ("symlink", target)


@dataclass
class Synced:
    """What a file held at its last fsync: its size, and every block changed since, as it was."""

    size: int
    blocks: dict[int, bytes] = field(default_factory=dict)


@dataclass
class Dropped:
    files: int = 0  # files whose unsynced data was undone
    blocks: int = 0
    names: int = 0  # directory entries removed or put back
    lost_names: int = 0  # a name that cannot be put back (its file was not kept): a harness bug
    torn: bool = False
    held_writes: int = 0  # writes seen since the mount, for the report


class LazyFS(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, backing: Path) -> None:
        self.root = backing / FILES
        self.limbo = backing / LIMBO
        shutil.rmtree(self.limbo, ignore_errors=True)
        self.limbo.mkdir(parents=True)
        self.root.mkdir(exist_ok=True)
        self.mutex = threading.Lock()  # not `lock`: that name is a FUSE operation
        self.synced: dict[int, Synced] = {}  # by inode: files written since their last fsync
        self.listings: dict[str, dict[str, Entry]] = {}  # by path: dirs changed since their fsync
        self.kept: set[int] = set()  # inodes linked into limbo
        self.last_write: tuple[int, int, int] | None = None  # inode, offset, length
        self.writes = 0

    # --- paths, and what is kept before a change --------------------------------------------

    def real(self, path: str) -> str:
        return str(self.root) + path

    def _keep(self, real: str, ino: int) -> None:
        if ino not in self.kept:
            with contextlib.suppress(FileExistsError):
                os.link(real, self.limbo / str(ino))
            self.kept.add(ino)

    def _listing(self, real_dir: str) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        with os.scandir(real_dir) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    found[entry.name] = ("symlink", os.readlink(entry.path))
                elif stat.S_ISDIR(st.st_mode):
                    found[entry.name] = ("dir", st.st_ino)
                else:
                    found[entry.name] = ("file", st.st_ino)
                    self._keep(entry.path, st.st_ino)
        return found

    def _changing_dir(self, path: str) -> None:
        """Before a name in `path`'s directory changes: its listing as last synced, if not yet."""
        parent = os.path.dirname(path) or "/"
        if parent not in self.listings:
            self.listings[parent] = self._listing(self.real(parent))

    def _changing_data(self, fd: int, real: str | None, start: int, end: int) -> int:
        """Before bytes [start, end) of the file open as `fd` change: each block as last synced."""
        st = os.fstat(fd)
        kept = self.synced.get(st.st_ino)
        if kept is None:
            kept = self.synced[st.st_ino] = Synced(st.st_size)
            if real is not None:
                self._keep(real, st.st_ino)
        for block in range(start // BLOCK, (max(end, start + 1) - 1) // BLOCK + 1):
            if block not in kept.blocks and block * BLOCK < kept.size:
                kept.blocks[block] = os.pread(fd, BLOCK, block * BLOCK)
        return st.st_ino

    # --- the file system ------------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.fstat(fh) if fh is not None else os.lstat(self.real(path))
        attrs = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size")}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        if st.st_ino in self.kept and not stat.S_ISDIR(st.st_mode):
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

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self.real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self.real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        os.utime(self.real(path), ns=times) if times else os.utime(self.real(path))
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        with self.mutex:
            self._changing_dir(path)
            os.mknod(self.real(path), mode, dev)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        with self.mutex:
            self._changing_dir(path)
            os.mkdir(self.real(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        with self.mutex:
            self._changing_dir(path)
            os.rmdir(self.real(path))
        return 0

    def unlink(self, path: str) -> int:
        with self.mutex:
            self._changing_dir(path)
            os.unlink(self.real(path))
        return 0

    def symlink(self, target: str, source: str) -> int:
        with self.mutex:
            self._changing_dir(target)
            os.symlink(source, self.real(target))
        return 0

    def rename(self, old: str, new: str) -> int:
        with self.mutex:
            self._changing_dir(old)
            self._changing_dir(new)
            os.rename(self.real(old), self.real(new))
        return 0

    def link(self, target: str, source: str) -> int:
        with self.mutex:
            self._changing_dir(target)
            os.link(self.real(source), self.real(target))
        return 0

    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        with self.mutex:
            self._changing_dir(path)
            return os.open(self.real(path), _backing(flags) | os.O_CREAT, mode)

    def open(self, path: str, flags: int) -> int:
        with self.mutex:
            fd = os.open(self.real(path), _backing(flags) & ~os.O_TRUNC)
            if flags & os.O_TRUNC:
                self._truncate(fd, self.real(path), 0)
            return fd

    def _truncate(self, fd: int, real: str | None, length: int) -> None:
        size = os.fstat(fd).st_size
        if length < size:
            self._changing_data(fd, real, length, size)
        else:
            self._changing_data(fd, real, size, size)  # notes the size to go back to
        os.ftruncate(fd, length)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self.mutex:
            fd = os.open(self.real(path), os.O_RDWR) if fh is None else fh
            try:
                self._truncate(fd, self.real(path), length)
            finally:
                if fh is None:
                    os.close(fd)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self.mutex:
            ino = self._changing_data(
                fh, None if path is None else self.real(path), offset, offset + len(data)
            )
            written = os.pwrite(fh, data, offset)
            self.last_write = (ino, offset, written)
            self.writes += 1
        return written

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self.mutex:  # the backing file is not synced: only a cut of this file system is simulated
            self.synced.pop(os.fstat(fh).st_ino, None)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self.mutex:
            self.listings.pop(path, None)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    # --- the power cut ----------------------------------------------------------------------------

    def drop(self, tear_seed: int | None) -> Dropped:
        """Undo everything not synced (after the unmount: nothing else touches the files now)."""
        dropped = Dropped(held_writes=self.writes)
        torn = self._torn_prefix(tear_seed) if tear_seed is not None else None
        for path in sorted(self.listings, key=lambda p: p.count("/") if p != "/" else 0):
            real_dir = self.real(path.rstrip("/"))
            if os.path.isdir(real_dir):
                self._restore_listing(real_dir, self.listings[path], dropped)
        for ino, kept in self.synced.items():
            dropped.files += 1
            dropped.blocks += len(kept.blocks)
            with _opened(self.limbo / str(ino)) as fd:
                if fd is not None:
                    for block, old in kept.blocks.items():
                        os.pwrite(fd, old, block * BLOCK)
                    os.ftruncate(fd, kept.size)
        if torn is not None:
            ino, offset, data = torn
            with _opened(self.limbo / str(ino)) as fd:
                if fd is not None:
                    os.pwrite(fd, data, offset)
                    dropped.torn = True
        self.synced.clear()
        self.listings.clear()
        return dropped

    def _torn_prefix(self, seed: int) -> tuple[int, int, bytes] | None:
        """The part of the last unsynced write that reaches the disk: up to a sector boundary."""
        if self.last_write is None or self.last_write[0] not in self.synced:
            return None
        ino, offset, length = self.last_write
        first = (offset // SECTOR + 1) * SECTOR
        cuts = range(first, offset + length, SECTOR)
        if not cuts:
            return None
        cut = random.Random(seed).choice(cuts)
        with _opened(self.limbo / str(ino)) as fd:
            return None if fd is None else (ino, offset, os.pread(fd, cut - offset, offset))

    def _restore_listing(self, real_dir: str, listing: dict[str, Entry], dropped: Dropped) -> None:
        now = self._listing_plain(real_dir)
        for name, entry in now.items():
            if listing.get(name) != entry:
                target = os.path.join(real_dir, name)
                shutil.rmtree(target) if entry[0] == "dir" else os.unlink(target)
                dropped.names += 1
        for name, entry in listing.items():
            if now.get(name) == entry:
                continue
            target = os.path.join(real_dir, name)
            kind, what = entry
            dropped.names += 1
            if kind == "dir":
                os.mkdir(target)
            elif kind == "symlink":
                os.symlink(str(what), target)
            elif (self.limbo / str(what)).exists():
                os.link(self.limbo / str(what), target)
            else:
                dropped.lost_names += 1

    @staticmethod
    def _listing_plain(real_dir: str) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        with os.scandir(real_dir) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                kind = (
                    "symlink" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else "file"
                )
                found[entry.name] = (kind, os.readlink(entry.path) if kind == "symlink" else st.st_ino)
        return found

    def forget(self) -> None:
        shutil.rmtree(self.limbo, ignore_errors=True)


def _backing(flags: int) -> int:
    """The flags to open the backing file with: readable (the blocks a write changes are read
    first, to keep them), and without O_APPEND (the kernel gives each write its offset)."""
    if flags & os.O_ACCMODE == os.O_WRONLY:
        flags = flags & ~os.O_ACCMODE | os.O_RDWR
    return flags & ~os.O_APPEND


class _opened:
    """`with _opened(path) as fd`: a read-write descriptor, or None when the file is gone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> int | None:
        try:
            self.fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            self.fd = None
        return self.fd

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)


def main(backing: str, mountpoint: str) -> None:
    fs = LazyFS(Path(backing))
    mfusepy.FUSE(fs, mountpoint, foreground=True, fsname="lazyfs", default_permissions=True)
    command = sys.stdin.readline().split()
    dropped = Dropped(held_writes=fs.writes)
    if command[:1] == ["drop"]:
        dropped = fs.drop(int(command[2]) if command[1:2] == ["tear"] else None)
    fs.forget()
    sys.stdout.write(json.dumps(dropped.__dict__) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
