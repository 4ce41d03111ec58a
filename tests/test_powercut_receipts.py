"""The receipt files survive a power cut right after each of their writes (issue 25, with the harness
of issue 24): the key, receipts.pub and the first checkpoint written at the first start, and the
checkpoint signed at a clean stop. Before they were written durably, a cut after the first start
came back with the key's name gone (a new key made, the kept checkpoint unreadable) or an empty
receipts.pub, and the next start rebuilt it from the hostname of the day.
"""

from __future__ import annotations

import contextlib
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.agentproc import status_code, wait_for
from support.inproc import run_cli
from support.powercut.disk import DiskAgent, LazyDisk, power_cut, short_socket_dir

from waystation import durable
from waystation.receipts.checkpoints import VerifierKey, open_checkpoint

OFFLINE = {"WAYSTATION_CONNECTIVITY__MODE": "offline"}


@pytest.fixture
def agent(lazy_disk: LazyDisk) -> Iterator[DiskAgent]:
    home = lazy_disk.path / "home"
    home.mkdir(mode=0o700)
    durable.fsync_dir(lazy_disk.path)
    sockets = short_socket_dir()
    made = DiskAgent(home, sockets, OFFLINE)
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


def test_a_power_cut_at_any_write_of_the_receipt_files_needs_no_repair(
    lazy_disk: LazyDisk, soak_length: Callable[[int, int], int], soak_report: Callable[[str], None]
) -> None:
    """The first start writes receipts.key, receipts.pub and a checkpoint: the power goes just
    before each operation on them in turn (a freeze point: lazyfs.py), and the next start needs
    no repair: the key and its origin agree, a checkpoint that survived opens, verify passes."""
    homes = [lazy_disk.path / f"home{n}" for n in range(64)]
    for home in homes:
        home.mkdir(mode=0o700)
    durable.fsync_dir(lazy_disk.path)
    sockets = short_socket_dir()
    lazy_disk.unmount()
    try:
        lazy_disk.mount(freeze_at=10**9, watch=WATCH)
        with started(homes[0], sockets) as agent:
            key = agent.api("GET", "/v1/receipts/key").json()["key"]
        points = lazy_disk.cut().counted  # every operation on them in a first start
        assert points >= 8 and key.startswith("waystation/")
        chosen = random.Random().sample(range(points), min(points, soak_length(2, points)))  # others each run
        for n, home in zip(sorted(chosen), homes[1:], strict=False):
            cut_at(DiskAgent(home, sockets, OFFLINE), lazy_disk, n)
            with started(home, sockets) as agent:  # no repair: it starts, and all agrees
                signed = kept(agent)
                assert agent.api("GET", "/v1/receipts/key").json()["key"] == signed[0], n
                assert agent.api("GET", "/v1/receipts/verify").json()["ok"], n
                assert agent.api("GET", "/v1/status").json()["signing"] == {"ok": True, "error": None}, n
            lazy_disk.unmount()
        soak_report(
            f"a power cut at {len(chosen)} of the {points} operations on the receipt files: no repair"
        )
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def cut_at(agent: DiskAgent, disk: LazyDisk, n: int) -> None:
    """A first start (and, when it gets there, a stop) with the power going at freeze point n."""
    disk.mount(freeze_at=n, watch=WATCH)
    agent.proc = proc = agent.launch()
    wait_for(lambda: disk.frozen or proc.poll() is not None or status_code(agent.socket) == 200)
    if not disk.frozen and proc.poll() is None:
        agent.stop(30)  # the point is in the stop's signing
    wait_for(lambda: disk.frozen or proc.poll() is not None, what=f"freeze point {n}")
    agent.kill()
    disk.cut()
    disk.mount()


WATCH = "receipts."  # receipts.key, receipts.pub, receipts.checkpoint and their temporary files


@contextlib.contextmanager
def started(home: Path, sockets: Path) -> Iterator[DiskAgent]:
    agent = DiskAgent(home, sockets, OFFLINE)
    try:
        agent.start(timeout=60)
        yield agent
        assert agent.stop(30) == 0
    finally:
        agent.close()
