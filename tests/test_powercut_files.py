"""What the agent makes survives a power cut right after it answered (issue 24, with issue 25's
durable writes): a pulled model with its record, and a state directory made at the first start.
Both were lost before: the directories were made without syncing their parents (models/, the
state directory), and a model's record was renamed in without being fsynced first."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator

import pytest
from support.fakehub import FakeHub, fake_gguf
from support.inproc import run_cli
from support.powercut.disk import DiskAgent, LazyDisk, power_cut, short_socket_dir

from waystation import durable


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as hub:
        yield hub


def test_a_pulled_model_and_its_record_survive_a_power_cut(lazy_disk: LazyDisk, hub: FakeHub) -> None:
    home = lazy_disk.path / "home"
    home.mkdir(mode=0o700)
    durable.fsync_dir(lazy_disk.path)
    content = fake_gguf(1_500_000, seed=11)
    hub.plain["Cut-Model.gguf"] = content
    digest = hashlib.sha256(content).hexdigest()
    env = {"WAYSTATION_SOCKET": str(lazy_disk.base / "none.sock")}  # no agent: the pull runs here
    done = run_cli(home, "models", "pull", hub.file_url("Cut-Model.gguf"), "--sha256", digest, env=env)
    assert done.returncode == 0, done.stderr

    cut = lazy_disk.cut()  # the power goes as soon as the pull has answered
    lazy_disk.mount()
    assert cut.lost_names == 0, cut
    assert (home / "models" / "cut-model.gguf").read_bytes() == content
    listed = json.loads(run_cli(home, "models", "ls", "--json", env=env).stdout)["data"]
    model = next(m for m in listed if m["id"] == "cut-model")
    assert model["waystation"]["verified"] is True and model["waystation"]["source"] == hub.file_url(
        "Cut-Model.gguf"
    )


def test_a_state_directory_the_agent_made_survives_a_power_cut(lazy_disk: LazyDisk) -> None:
    """WAYSTATION_HOME that did not exist: the agent makes it (and its parents) with its database;
    a task acknowledged there is still there after a cut. The new directory's name used to be
    left unsynced in its parent, and the cut took the whole home away."""
    home = lazy_disk.path / "new" / "home"
    sockets = short_socket_dir()
    agent = DiskAgent(home, sockets, {"WAYSTATION_CONNECTIVITY__MODE": "offline"})
    try:
        agent.start(timeout=60)
        task = agent.api(
            "POST", "/v1/tasks", json={"tool": "web_fetch", "args": {"url": "http://127.0.0.1:9/"}}
        )
        assert task.status_code == 201, task.text
        power_cut(agent, lazy_disk)
        agent.start(timeout=60)
        assert agent.api("GET", f"/v1/tasks/{task.json()['id']}").status_code == 200
    finally:
        agent.close()
        shutil.rmtree(sockets, ignore_errors=True)
