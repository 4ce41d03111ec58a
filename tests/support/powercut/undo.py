"""What the lazy file system keeps in order to undo unsynced changes, and the undoing: a power cut.

- a file's data: its size at the last fsync and, for each 4 KiB block written or cut off since,
  that block as it was (an undo log, so the cost is the unsynced writes, not the file's size);
- a directory's names: its listing at the first create, rename, link or removal in it since its
  last fsync (POSIX: a new or renamed name is durable only once its directory is fsynced);
  every file such a listing names is hard-linked into a hidden `limbo/` so that a name removed or
  renamed over can be put back.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 4096
SECTOR = 512

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
    counted: int = 0  # operations on the watched files (LazyFS's freeze point counts these)
    frozen: bool = False  # the freeze point was reached: nothing was written after it


class Undo:
    """The undo state of one mount over `root`, with kept files linked into `limbo`."""

    def __init__(self, root: Path, limbo: Path) -> None:
        self.root, self.limbo = root, limbo
        shutil.rmtree(self.limbo, ignore_errors=True)
        self.limbo.mkdir(parents=True)
        self.root.mkdir(exist_ok=True)
        self.synced: dict[int, Synced] = {}  # by inode: files written since their last fsync
        self.listings: dict[str, dict[str, Entry]] = {}  # by path: dirs changed since their fsync
        self.kept: set[int] = set()  # inodes linked into limbo
        self.last_write: tuple[int, int, int] | None = None  # inode, offset, length

    def real(self, path: str) -> str:
        return str(self.root) + path

    def keep(self, real: str, ino: int) -> None:
        if ino not in self.kept:
            with contextlib.suppress(FileExistsError):
                os.link(real, self.limbo / str(ino))
            self.kept.add(ino)

    def changing_dir(self, path: str) -> None:
        """Before a name in `path`'s directory changes: its listing as last synced, if not yet."""
        parent = os.path.dirname(path) or "/"
        if parent not in self.listings:
            found = listing(self.real(parent))
            for name, (kind, ino) in found.items():
                if kind == "file":
                    self.keep(os.path.join(self.real(parent), name), int(ino))
            self.listings[parent] = found

    def changing_data(self, fd: int, real: str | None, start: int, end: int) -> int:
        """Before bytes [start, end) of the file open as `fd` change: each block as last synced."""
        st = os.fstat(fd)
        kept = self.synced.get(st.st_ino)
        if kept is None:
            kept = self.synced[st.st_ino] = Synced(st.st_size)
            if real is not None:
                self.keep(real, st.st_ino)
        for block in range(start // BLOCK, (max(end, start + 1) - 1) // BLOCK + 1):
            if block not in kept.blocks and block * BLOCK < kept.size:
                kept.blocks[block] = os.pread(fd, BLOCK, block * BLOCK)
        return st.st_ino

    def synced_file(self, fd: int) -> None:
        self.synced.pop(os.fstat(fd).st_ino, None)

    def synced_dir(self, path: str) -> None:
        self.listings.pop(path, None)

    def drop(self, tear_seed: int | None) -> Dropped:
        """Undo everything not synced (after the unmount: nothing else touches the files now)."""
        dropped = Dropped()
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

    def _restore_listing(self, real_dir: str, synced: dict[str, Entry], dropped: Dropped) -> None:
        now = listing(real_dir)
        for name, entry in now.items():
            if synced.get(name) != entry:
                target = os.path.join(real_dir, name)
                shutil.rmtree(target) if entry[0] == "dir" else os.unlink(target)
                dropped.names += 1
        for name, entry in synced.items():
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

    def forget(self) -> None:
        shutil.rmtree(self.limbo, ignore_errors=True)


def listing(real_dir: str) -> dict[str, Entry]:
    found: dict[str, Entry] = {}
    with os.scandir(real_dir) as entries:
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            kind = "symlink" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else "file"
            found[entry.name] = (kind, os.readlink(entry.path) if kind == "symlink" else st.st_ino)
    return found


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
