"""Children that a power cut kills, forked from a forkserver that imported their code once.

Starting a child costs a fork (a few ms), not the second the store's imports take: the forkserver
preloads the modules the children run (support/powercut/workload.py and pulling.py, and with them
the store, the turn engine, the receipts, the fleet outbox and the model pulls). A child tells
its parent what it got done on a pipe, one message per step that returned (was acknowledged).
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.forkserver
import os
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parents[2]
PRELOAD = ["support.powercut.workload", "support.powercut.pulling"]


@functools.cache
def context() -> Any:
    """The forkserver context, its server started with the children's code imported."""
    found = multiprocessing.get_context("forkserver")
    found.set_forkserver_preload(PRELOAD)
    # Python 3.11's forkserver ignores the sys.path it is handed: it finds tests/ on PYTHONPATH.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), saved]))
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        os.environ.pop("PYTHONPATH") if saved is None else os.environ.update(PYTHONPATH=saved)
    return found


def start(target: Callable[..., None], *args: Any) -> tuple[Any, Connection]:
    """`target(*args, out)` in a child; the pipe it tells on."""
    reader, writer = context().Pipe(duplex=False)
    child = context().Process(target=target, args=(*args, writer), daemon=True)
    child.start()
    writer.close()  # the child's end only: its death is the end of the pipe
    return child, reader


def hear(reader: Connection, heard: Callable[[Any], None], until: float, stop_at: str | None = None) -> bool:
    """Pass what the child tells to `heard` until `until` (or until the `stop_at` message: True)."""
    while (left := until - time.monotonic()) > 0 or reader.poll(0):
        if not reader.poll(max(left, 0)):
            continue
        try:
            message = reader.recv()
        except (EOFError, OSError):
            return False  # it died (or was killed mid-message: that one was never acknowledged)
        if message[0] == stop_at:
            return True
        heard(message)
    return False


def kill(child: Any, reader: Connection, heard: Callable[[Any], None]) -> None:
    """SIGKILL, and what it told before it died."""
    child.kill()
    child.join()
    hear(reader, heard, time.monotonic())
    reader.close()
