"""The receipt files survive a power cut right after each of their writes (issue 25, with the harness
of issue 24): the key, receipts.pub and the first checkpoint written at the first start, and the
checkpoint signed at a clean stop. Before they were written durably, a cut after the first start
came back with the key's name gone (a new key made, the kept checkpoint unreadable) or an empty
receipts.pub, and the next start rebuilt it from the hostname of the day.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from support.inproc import run_cli
from support.powercut.disk import DiskAgent, LazyDisk, power_cut, short_socket_dir

from waystation import durable
from waystation.receipts.checkpoints import VerifierKey, open_checkpoint


@pytest.fixture
def agent(lazy_disk: LazyDisk) -> Iterator[DiskAgent]:
    home = lazy_disk.path / "home"
    home.mkdir(mode=0o700)
    durable.fsync_dir(lazy_disk.path)
    sockets = short_socket_dir()
    made = DiskAgent(home, sockets, {"WAYSTATION_CONNECTIVITY__MODE": "offline"})
    try:
        yield made
    finally:
        made.close()
        shutil.rmtree(sockets, ignore_errors=True)


def kept(agent: DiskAgent) -> tuple[str, int]:
    key = VerifierKey.parse((agent.home / "receipts.pub").read_text())
    checkpoint = open_checkpoint((agent.home / "receipts.checkpoint").read_text(), key)
    return str(key), checkpoint.size


def test_the_receipt_files_survive_a_power_cut_after_each_write(
    agent: DiskAgent, lazy_disk: LazyDisk
) -> None:
    agent.start(timeout=60)
    key = agent.api("GET", "/v1/receipts/key").json()["key"]
    power_cut(agent, lazy_disk)  # right after the first start wrote the key, its .pub, a checkpoint
    assert kept(agent) == (key, 0)

    agent.start(timeout=60)
    assert agent.api("GET", "/v1/receipts/key").json()["key"] == key
    for i in range(3):
        task = agent.api(
            "POST", "/v1/tasks", json={"tool": "web_fetch", "args": {"url": f"http://127.0.0.1:9/{i}"}}
        )
        assert agent.api("POST", f"/v1/tasks/{task.json()['id']}/cancel").status_code == 200
    assert agent.stop(30) == 0  # signs the checkpoint of 3 at stop
    lazy_disk.cut()  # and the power goes right after
    lazy_disk.mount()
    assert kept(agent) == (key, 3)
    verified = run_cli(agent.home, "receipts", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
