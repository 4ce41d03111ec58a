"""A real model's turn parked, then a power cut (issue 24, item 2): the real agent and its embedded
model (llama.cpp) on the lazy disk. Offline, the turn parks its call to a loopback page; the
power goes; the agent comes back online and the turn resumes once, with the page's title, under
the same turn id: its parked receipt, the task's, and one final one.

The plumbing of parking and resuming is cut hundreds of times in tests/test_powercut_store.py
(a scripted model); this one real-model case costs two generations and two starts, so it runs
in the long soak (WAYSTATION_SOAK=long) only.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

import pytest
from support.agentproc import Receiver
from support.powercut.disk import DiskAgent, LazyDisk, power_cut, short_socket_dir

from waystation import durable


@pytest.mark.timeout(600)
def test_a_real_models_parked_turn_survives_a_power_cut_and_resumes_once(
    lazy_disk: LazyDisk, receiver: Receiver, soak_length: Callable[[int, int], int]
) -> None:
    if not soak_length(0, 1):
        pytest.skip("a real model's power cut runs with WAYSTATION_SOAK=long (the scripted ones always)")
    home = lazy_disk.path / "home"
    durable.make_dirs(home, 0o700)
    sockets = short_socket_dir()
    agent = DiskAgent(home, sockets, {"WAYSTATION_CONNECTIVITY__MODE": "offline"})
    try:
        agent.start(timeout=120)
        url = receiver.url("/page/Quiet-Harbour")
        parked = agent.api(
            "POST", "/v1/turns", json={"prompt": f"Fetch {url} and tell me its title."}, timeout=300
        )
        assert parked.status_code == 200 and parked.json()["status"] == "parked", parked.text
        turn_id = parked.json()["turn_id"]
        power_cut(agent, lazy_disk)  # right after the parked turn was acknowledged
        agent.start({"WAYSTATION_CONNECTIVITY__MODE": "online"}, timeout=120)
        deadline = time.monotonic() + 300
        while (turn := agent.api("GET", f"/v1/turns/{turn_id}").json())["state"] in ("parked", "resuming"):
            assert time.monotonic() < deadline, turn
            time.sleep(0.5)
        assert turn["state"] == "ok" and turn["tool_calls"][0]["result"] == "HTTP 200 · Quiet Harbour", turn
        kinds = [agent.api("GET", f"/v1/receipts/{r}").json() for r in turn["receipt_ids"]]
        assert [(r["kind"], r["status"]) for r in kinds] == [
            ("turn", "parked"),
            ("task", "ok"),
            ("turn", "ok"),
        ]
        assert len({h.key for h in receiver.hits("/page")}) == 1  # one call, one key
    finally:
        agent.close()
        shutil.rmtree(sockets, ignore_errors=True)
