"""Two tests at once on two cores, except the ones that must have the machine to themselves.

The README's test command runs the suite on pytest-xdist workers, one per core. Most tests spend
their time waiting (on an agent starting, a socket, a delivery, a sleep), so two workers finish
them in well under the time of one. A model generates on this worker's share of the cores, both in
an agent a test starts (agentproc.agent_env sets `[model] threads`, as a person running two model
processes on one machine would) and in the test's own process (conftest.py limits OpenMP, whose
threads llama.cpp runs on; MLX on a CPU keeps about one core busy), so that two of them side by
side do not fight over the same cores. The tests that time real processes (floods of connections,
idle wakeups, what a terminal shows while a turn runs) measure what a neighbour would disturb: they
are marked `alone` (by hand). Each takes the run's lock exclusively, every other test takes it
shared, so an `alone` test waits for the running test to end and nothing starts beside it. A
turnstile (the `gate` lock, taken briefly by every test before the run lock) lets an `alone` test
that waits go before any shared test asked later.
"""

from __future__ import annotations

import fcntl
import json
import sys
import tempfile
from pathlib import Path
from typing import IO

import pytest

# Seconds each file took in a run on 2 cores (written by this module from a --junitxml report:
# `python tests/support/alone.py report.xml`); a file not in it is estimated from its markers.
FILE_SECONDS = Path(__file__).parent.parent / "data" / "file_seconds.json"
ESTIMATE_S = {"soak": 15.0, "slow": 8.0, "model": 2.0, "process": 1.0}  # a test, by what it starts
IN_PROCESS_S = 0.05


def costliest_files_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """The files in order of their cost, longest first, each file's tests in their own order.

    The workers take files from the front as they finish one (`--dist loadfile`): with the long
    ones first, the run ends on short files on both workers rather than on one long file while
    the other worker has nothing left (the longest-first rule for scheduling)."""
    measured: dict[str, float] = json.loads(FILE_SECONDS.read_text()) if FILE_SECONDS.exists() else {}
    estimated: dict[str, float] = {}
    for item in items:
        marks = {mark.name for mark in item.iter_markers()}
        cost = max((ESTIMATE_S[name] for name in marks & ESTIMATE_S.keys()), default=IN_PROCESS_S)
        estimated[item.path.name] = estimated.get(item.path.name, 0.0) + cost
    return sorted(items, key=lambda item: -measured.get(item.path.name, estimated[item.path.name]))


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


def write_file_seconds(report: Path) -> None:
    """FILE_SECONDS from a --junitxml report of a whole run."""
    import xml.etree.ElementTree as ET

    seconds: dict[str, float] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("classname", "tests.?").split(".")[1] + ".py"  # tests.test_x[.Class]
        seconds[name] = round(seconds.get(name, 0.0) + float(case.get("time", "0")), 1)
    FILE_SECONDS.write_text(json.dumps(dict(sorted(seconds.items())), indent=0) + "\n")


if __name__ == "__main__":
    write_file_seconds(Path(sys.argv[1]))
