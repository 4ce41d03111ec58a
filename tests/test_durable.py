"""waystation/durable.py in place (the power-cut harness tests what survives a cut): the mode is
the one asked whatever the umask, no temporary file is left, a write that fails leaves the old
file, and a file system without hard links still makes a file once."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from waystation import durable


def test_write_atomic_replaces_whole_with_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    durable.write_atomic(path, "old\n", 0o644)
    old_umask = os.umask(0o077)
    try:
        durable.write_atomic(path, b"new\n", 0o640)
    finally:
        os.umask(old_umask)
    assert path.read_text() == "new\n" and path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "receipts.checkpoint"
    durable.write_atomic(path, "old\n")

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        durable.write_atomic(path, "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["receipts.checkpoint"]


@pytest.mark.parametrize("links", [True, False])
def test_write_new_makes_a_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: bool) -> None:
    if not links:  # FAT, some network file systems

        def no_links(src: object, dst: object) -> None:
            raise PermissionError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "receipts.key"
    assert durable.write_new(path, "first\n", 0o600)
    assert not durable.write_new(path, "second\n", 0o600)
    assert path.read_text() == "first\n" and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["receipts.key"]
