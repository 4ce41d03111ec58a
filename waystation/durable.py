"""Files the agent replaces, written so that a power cut leaves the old file or the new one whole.

A rename alone survives `kill -9` (the kernel's page cache outlives the process) but not a power
cut: the new name may reach the disk before the bytes it names (an empty file after the cut, as
issue 25 saw `receipts.pub` come back), or the rename itself may be lost. So every replacement is:
the bytes into a temporary file in the same directory, fsync, rename over the old name, fsync of
the directory (which makes the rename durable). A file made once and never replaced (a signing
key) is linked into place instead of renamed: a link fails when the name exists, so two processes
making it at once keep the first one's, never a mix.

Every file the agent writes whole goes through here (receipts.key, receipts.pub,
receipts.checkpoint, api.token, config.toml, service units, model records, models moved in), and
every directory it makes for them (make_dirs): a new directory's name is durable only once its
parent is fsynced, as a file's is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make the names created, renamed or removed in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(folder: Path, mode: int = 0o777) -> None:
    """`folder.mkdir(mode, parents=True, exist_ok=True)`, each directory it makes made durable
    in its parent (else a power cut takes the new directory, and everything in it, away)."""
    target, missing = folder, []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for n, new in enumerate(reversed(missing)):
        try:
            os.mkdir(new, mode if n == len(missing) - 1 else 0o777)
        except FileExistsError:
            continue  # made meanwhile by another process, which syncs it
        fsync_dir(new.parent)
    if not target.is_dir():  # as mkdir(exist_ok=True) says of a file in the way
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))


def _written(path: Path, data: bytes | str, mode: int) -> Path:
    """A synced temporary file beside `path` holding `data`, with `mode` whatever the umask."""
    raw = data.encode() if isinstance(data, str) else data
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        Path(temporary).unlink(missing_ok=True)
        raise
    os.close(fd)
    return Path(temporary)


def write_atomic(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Replace `path` with `data`, durably: after a crash or power cut it holds the old content or
    the new, whole. The directory must exist."""
    temporary = _written(path, data, mode)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_new(path: Path, data: bytes | str, mode: int = 0o600) -> bool:
    """Make `path` hold `data`, durably, unless it exists: False then, and it is left as it is."""
    temporary = _written(path, data, mode)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links (FAT, some network ones): made in place
        return _made_in_place(path, data, mode)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        fsync_dir(path.parent)
    return True


def _made_in_place(path: Path, data: bytes | str, mode: int) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
        out.flush()
        os.fsync(out.fileno())
    return True


def move_into(source: Path, target: Path) -> None:
    """Rename `source` (already synced) over `target`, durably: the target's directory is synced,
    and the source's too when it is another (else the old name may come back after a cut)."""
    os.replace(source, target)
    fsync_dir(target.parent)
    if source.parent.resolve() != target.parent.resolve():
        fsync_dir(source.parent)
