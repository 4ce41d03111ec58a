"""Two tests at once on two cores, except the ones that must have the machine to themselves.

The README's test command runs the suite on pytest-xdist workers, one per core. Most tests spend
their time waiting (on an agent starting, a socket, a delivery, a sleep), so two workers finish
them in well under the time of one. Some cannot share the machine:
- a real model in this process generates with one thread per core (llama.cpp's default): with a
  busy neighbour its threads wait on each other at every step, many times slower;
- tests that time real processes (a link flapping, floods of connections, idle wakeups, the
  systemd watchdog, stage events) measure what a neighbour would disturb.
Those are marked `alone` (by hand, or by conftest.py for `model`): each takes the run's lock
exclusively, every other test takes it shared, so an `alone` test waits for the running test to
end and nothing starts beside it. A turnstile (the `gate` lock, taken briefly by every test
before the run lock) lets an `alone` test that waits go before any shared test asked later.

Agents that a test starts run their model on a worker's share of the cores (agentproc.agent_env,
as a person running two model processes on one machine would set `[model] threads`), so two of
them side by side do not fight over the same cores.
"""

from __future__ import annotations

import fcntl
import tempfile
from pathlib import Path
from typing import IO


class RunLock:
    """One worker's side of the run's lock (a directory all workers of one run share)."""

    def __init__(self, run_id: str) -> None:
        directory = Path(tempfile.gettempdir()) / f"waystation-tests-{run_id}"
        directory.mkdir(exist_ok=True)
        self._gate: IO[str] = open(directory / "gate", "a")  # noqa: SIM115 (held for the run)
        self._run: IO[str] = open(directory / "run", "a")  # noqa: SIM115
        self._held = False

    def before(self, alone: bool) -> None:
        """Wait for this test's turn: the lock exclusively (`alone`), else shared."""
        if self._held:  # an `alone` test right after another on this worker: still exclusive
            return
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._run, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)
        self._held = True

    def after(self, alone: bool, next_alone: bool) -> None:
        """Let the other workers go on; an `alone` test followed by another keeps the machine
        (else the other worker would start a test between them, and the next would wait for it)."""
        if alone and next_alone:
            return
        fcntl.flock(self._run, fcntl.LOCK_UN)
        self._held = False
