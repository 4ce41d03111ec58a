"""`models pull` in a child process that a power cut kills (tests/test_powercut_pull.py): the
operation's own two steps, the name claimed and the download checked and installed."""

from __future__ import annotations

import asyncio
import logging
from multiprocessing.connection import Connection
from pathlib import Path

import structlog

from waystation.adapters.models.pull import claimed, download, plan
from waystation.adapters.models.store import ModelStore


def pull(root: str, url: str, sha256: str, out: Connection) -> None:
    """Pull `url` into `root`; ("pulled",) once installed, ("failed", why) when a write failed."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    store = ModelStore(Path(root))
    wanted = plan(url, None, sha256, token=None, endpoint=None)
    try:
        with claimed(wanted, store):
            asyncio.run(download(wanted, store))
    except Exception as exc:  # the power went (a frozen disk fails every write): told, not raised
        out.send(("failed", repr(exc)))
        return
    out.send(("pulled",))
