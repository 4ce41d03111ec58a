"""The suite's own tiers: the in-process station answers like the agent, and the markers say
what a test starts (tests/support/inproc.py, tests/support/markers.py)."""

from __future__ import annotations

from pathlib import Path

from support import markers
from support.agentproc import Agent, Receiver, cli_process
from support.inproc import InProcessAgent, run_cli, station_client


async def test_the_station_serves_its_api_on_aiohttps_test_server(home: Path) -> None:
    async with station_client(home, {"WAYSTATION_CONNECTIVITY__MODE": "offline"}) as (station, client):
        answer = await client.get("/v1/status")
        assert answer.status == 200
        status = await answer.json()
        assert status["connectivity"]["mode"] == "offline"
        assert station.paths.database == home / "waystation.db"
        assert (home / "waystation.db").is_file()


def test_what_starts_a_process_is_marked_and_what_does_not_is_not() -> None:
    reach = markers.Reach()
    assert "process" in reach.marks(Agent)
    assert "process" in reach.marks(Receiver)
    assert "process" in reach.marks(cli_process)
    assert "process" not in reach.marks(InProcessAgent)
    assert "process" not in reach.marks(run_cli)


def test_an_in_process_command_answers_like_the_console_script(home: Path) -> None:
    done = run_cli(home, "status")
    assert done.returncode == 3  # no agent
    assert done.stderr.startswith("error: ") and "not running" in done.stderr
    assert run_cli(home, "--version").stdout.startswith("waystation ")
