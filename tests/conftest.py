"""Shared fixtures: real agent processes, a real loopback receiver, a real database file."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

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
