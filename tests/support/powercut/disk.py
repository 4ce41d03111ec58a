"""A disk that loses power on command: support/powercut/lazyfs.py mounted, cut, and mounted again.

`LazyDisk(base).mount()` mounts the lazy file system at `base/mnt` over `base/backing`; `cut()`
unmounts it and drops every write not fsynced (optionally tearing the last one); `mount()` again
is the machine coming back. `power_cut(agent, disk)` is the whole of it for an agent whose
WAYSTATION_HOME is on the disk: SIGKILL, drop, remount. `unavailable()` says why this machine
cannot do it (no /dev/fuse, no fusermount3, no libfuse3, no mfusepy), for a test to skip.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.agentproc import Agent

TESTS_DIR = Path(__file__).resolve().parents[2]


def unavailable() -> str | None:
    """Why FUSE cannot be used here, or None when it can."""
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse: the power-cut file system needs FUSE"
    if shutil.which("fusermount3") is None:
        return "no fusermount3 (Debian: apt-get install fuse3)"
    if ctypes.util.find_library("fuse3") is None:
        return "no libfuse3 (Debian: apt-get install libfuse3-dev)"
    if importlib.util.find_spec("mfusepy") is None:
        return "mfusepy is not installed (pip install mfusepy; it is in the dev extra)"
    return None


@dataclass(frozen=True)
class Cut:
    """What one power cut dropped (lazyfs.Dropped, as it reported it)."""

    files: int
    blocks: int
    names: int
    lost_names: int
    torn: bool
    held_writes: int
    counted: int  # operations on the watched files seen (all operations when none are watched)
    frozen: bool  # the freeze point was reached


class LazyDisk:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.backing = base / "backing"
        self.path = base / "mnt"
        self.proc: subprocess.Popen[str] | None = None
        self.backing.mkdir(parents=True, exist_ok=True)
        self.path.mkdir(exist_ok=True)

    def mount(self, freeze_at: int | None = None, watch: str = "", timeout: float = 20.0) -> LazyDisk:
        """Mounted; with `freeze_at`, the power goes just before the Nth operation on a file whose
        name holds `watch` (or a directory fsync): it and every later change fail (lazyfs.py)."""
        assert self.proc is None, "already mounted"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), *sys.path])}
        freeze = [] if freeze_at is None else ["--freeze-at", str(freeze_at), "--watch", watch]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "support.powercut.lazyfs", str(self.backing), str(self.path), *freeze],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.path):
            if self.proc.poll() is not None:
                raise AssertionError(f"the lazy file system did not mount: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise AssertionError("the lazy file system did not mount in time")
            time.sleep(0.02)
        return self

    @property
    def frozen(self) -> bool:
        return (self.backing / "frozen").exists()

    def _unmount(self, command: str) -> dict[str, Any]:
        proc = self.proc
        assert proc is not None and proc.stdin is not None, "not mounted"
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        for _ in range(100):  # busy a moment after a process on it was killed
            done = subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True, text=True)
            if done.returncode == 0:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"cannot unmount {self.path}: {done.stderr}")
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            # Unmounted here, but a copy of the mount in another mount namespace (a test's
            # `ip netns exec` or `unshare -m` meanwhile) keeps the file system alive: end its loop.
            proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # its threads' stacks, to say where it hangs
            time.sleep(2)
            proc.kill()
            _, err = proc.communicate(timeout=30)
            self.proc = None
            raise AssertionError(f"the lazy file system hung after its unmount:\n{err[-8000:]}") from None
        self.proc = None
        if proc.returncode != 0:
            raise AssertionError(f"the lazy file system failed ({proc.returncode}): {err[-3000:]}")
        report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return report

    def cut(self, tear_seed: int | None = None) -> Cut:
        """Power off: everything not fsynced is gone; with `tear_seed`, the last unsynced write
        reached the disk up to a sector boundary chosen by it. Unmounted after."""
        command = "drop" if tear_seed is None else f"drop tear {tear_seed}"
        return Cut(**self._unmount(command))

    def cut_in_place(self, tear_seed: int | None = None) -> Cut:
        """The same power cut, without the unmount and mount (a few ms, not a few hundred): call it
        only once every process that wrote on the disk is dead (its last writes answered)."""
        return Cut(**self._ask("cut" if tear_seed is None else f"cut tear {tear_seed}"))

    def freeze_at(self, point: int, watch: str = "") -> None:
        """The power goes just before operation `point` on a file whose name holds `watch` (every
        operation, when empty) from now on, until the next cut in place (see `mount`)."""
        assert " " not in watch
        self._ask(f"freeze {point} {watch}".rstrip())

    def fill(self, full: bool = True) -> None:
        """A full disk from now on (ENOSPC for every write, create or growth), or room again."""
        self._ask("full on" if full else "full off")

    def _ask(self, command: str) -> dict[str, Any]:
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None, "not mounted"
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        answer = proc.stdout.readline()
        if not answer:
            raise AssertionError(f"the lazy file system died at {command!r}: {proc.stderr.read()[-3000:]}")  # type: ignore[union-attr]
        found: dict[str, Any] = json.loads(answer)
        return found

    def unmount(self) -> None:
        """A clean shutdown: everything written stays."""
        self._unmount("keep")

    def close(self) -> None:
        if self.proc is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
            self.proc.kill()
            self.proc.communicate(timeout=30)
            self.proc = None


def power_cut(agent: Agent, disk: LazyDisk, tear_seed: int | None = None) -> Cut:
    """SIGKILL the agent, lose what it had not fsynced, mount the disk again."""
    agent.kill()
    cut = disk.cut(tear_seed)
    disk.mount()
    return cut


def short_socket_dir() -> Path:
    """A directory for an agent's socket off the lazy disk (a socket is no file to lose, and a
    Unix socket's path must be short)."""
    return Path(tempfile.mkdtemp(prefix="ws-cut-"))


class DiskAgent(Agent):
    """An agent whose WAYSTATION_HOME is on a lazy disk and whose socket is elsewhere."""

    def __init__(self, home: Path, socket_dir: Path, env: dict[str, str] | None = None) -> None:
        self._socket = socket_dir / "ws.sock"
        super().__init__(home, {"WAYSTATION_SOCKET": str(self._socket), **(env or {})})

    @property
    def socket(self) -> Path:
        return self._socket

    @property
    def log_path(self) -> Path:
        return self._socket.parent / "agent-output.log"  # kept whole across cuts, for a failure
