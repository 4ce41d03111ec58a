"""Room on disk for a pull: a download never takes the models' file system below a reserve, kept
free for the database (whose writes then fail with `disk_full`, 507, and with them every task and
turn), the log and whatever else lives there.

The reserve is `[model] keep_free_mb`, or by default the larger of 256 MiB and 1 % of the file
system, the 1 % at most 4 GiB (journald's `SystemKeepFree=` caps its share of a file system at
4 GiB the same way). A known size is checked before the first byte (as Ollama's pull checks a
manifest's layers against `statfs`), and the free space again before each chunk is written, since
a body may carry no length and the disk is shared (another download, the database) while it runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20
FLOOR = 256 * MIB
SHARE = 0.01
CEILING = 4 << 30


def reserve(fs_size: int, keep_free_mb: int = 0) -> int:
    """Bytes to leave free on a file system of `fs_size` bytes (`keep_free_mb` 0: the default)."""
    if keep_free_mb > 0:
        return keep_free_mb * 10**6
    return max(FLOOR, min(int(fs_size * SHARE), CEILING))


@dataclass(frozen=True)
class Room:
    """What the folder's file system has free (for an unprivileged writer), and what must stay so."""

    folder: Path
    free: int
    reserve: int

    @property
    def usable(self) -> int:
        return max(0, self.free - self.reserve)

    def allows(self, more: int) -> bool:
        return more <= self.usable


def measure(folder: Path, keep_free_mb: int = 0) -> Room:
    """The room on `folder`'s file system now (one statvfs: cheap enough before every chunk)."""
    found = os.statvfs(folder)
    free = found.f_bavail * found.f_frsize
    return Room(folder, free, reserve(found.f_blocks * found.f_frsize, keep_free_mb))


def shown(size: int) -> str:
    """Bytes as `models ls` shows sizes (decimal units)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
