"""Shared fixtures: real agent processes, a real loopback receiver, a real database file."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# tests/ is not a package: make the helper module importable as `agentproc`.
sys.path.insert(0, str(Path(__file__).parent))

from agentproc import Agent, Receiver, make_home, remove_home

from waystation.db import Database


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def agent_factory() -> Iterator[Callable[..., Agent]]:
    """Make agents in fresh homes; every process is killed and every home removed at teardown."""
    made: list[Agent] = []

    def make(env: dict[str, str] | None = None) -> Agent:
        agent = Agent(make_home(), env)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.close()
        remove_home(agent.home)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """A real, empty, migrated database file for one test."""
    database = await Database.open(tmp_path / "waystation.db")
    try:
        yield database
    finally:
        await database.close()


# --- soak runs -------------------------------------------------------------------------------
# Fault-injection and soak tests (marked `soak`) run a bounded version by default, which is what
# CI runs, and the full length with WAYSTATION_SOAK=long. Their figures (rounds, delays,
# latencies) are not pass/fail thresholds: they are printed in a "soak figures" section at the end
# of the run so a reader can see what was exercised.

SOAK_FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def soak_length() -> Callable[[int, int], int]:
    """soak_length(bounded, long): rounds (or seconds) to run; `long` with WAYSTATION_SOAK=long."""
    full = os.environ.get("WAYSTATION_SOAK", "").lower() == "long"
    return lambda bounded, long: long if full else bounded


@pytest.fixture
def soak_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record one line for the "soak figures" section of the terminal summary."""
    figures = request.config.stash.setdefault(SOAK_FIGURES, [])

    def report(line: str) -> None:
        figures.append(f"{request.node.name}: {line}")

    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    figures = config.stash.get(SOAK_FIGURES, [])
    if figures:
        terminalreporter.section("soak figures")
        for line in figures:
            terminalreporter.write_line(line)
