"""The command line's way to the station when no agent runs: the very operations the agent's
socket API calls (station/ops), on a station built in this process for direct use.

One event loop serves the command's life, so the database stays open across calls; it is shared
safely with an agent that starts meanwhile (see db.py). A read never creates a database that
does not exist yet: it runs against an empty one made for the moment, so it answers exactly as
an empty database would (no tasks, NotFound, an intact chain of 0 receipts).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from waystation.config import Paths
from waystation.config_load import load_settings

if TYPE_CHECKING:
    from waystation.station import FleetConsole, Station

T = TypeVar("T")
Operation = Callable[..., Coroutine[Any, Any, T]]


class DirectStation:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self._runner: asyncio.Runner | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._station: Station | None = None

    def call(self, op: Operation[T], *args: Any) -> T:
        """Run a station operation (one that may write) on this home's database."""
        if self._station is None:
            self._stack = contextlib.AsyncExitStack()
            self._station = self._run(self._build(self._stack, self.paths))
        return self._run(op(self._station, *args))

    def read(self, op: Operation[T], *args: Any) -> T:
        """Run an operation that only reads; no database file is created for it."""
        if self._station is not None or self.paths.database.exists():
            return self.call(op, *args)
        with tempfile.TemporaryDirectory(prefix="waystation-empty-") as empty:
            paths = dataclasses.replace(self.paths, database=Path(empty) / "waystation.db")
            return self._run(self._once(paths, op, args))

    def close(self) -> None:
        if self._runner is None:
            return
        try:
            if self._stack is not None:
                self._runner.run(self._stack.aclose())
        finally:
            self._runner.close()
            self._runner, self._stack, self._station = None, None, None

    async def _build(self, stack: contextlib.AsyncExitStack, paths: Paths) -> Station:
        from waystation import logs
        from waystation.station.build import build_direct

        settings = load_settings(self.paths)
        logs.configure(logging.WARNING)  # stdout belongs to the output: library lines, warnings only
        return await build_direct(stack, paths, settings)

    async def _once(self, paths: Paths, op: Operation[T], args: tuple[Any, ...]) -> T:
        async with contextlib.AsyncExitStack() as stack:
            return await op(await self._build(stack, paths), *args)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._runner is None:
            self._runner = asyncio.Runner()
        return self._runner.run(coro)


def fleet(paths: Paths, name: str, op: Callable[[FleetConsole], Coroutine[Any, Any, T]]) -> T:
    """Run a fleet operation (station/ops/fleet.py) with a hub for this one command, named `name`
    to the hub; no agent and no database are needed, on this host or any other."""

    async def run() -> T:
        from waystation.station.build import build_fleet_console

        async with contextlib.AsyncExitStack() as stack:
            return await op(await build_fleet_console(stack, paths, load_settings(paths), name))

    return asyncio.run(run())
