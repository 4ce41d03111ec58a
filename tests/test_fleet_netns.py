"""The fleet across a real link that is cut: the agent in a network namespace, the hub on the
other end of a veth pair. Receipts made while the link is down reach the hub once, in order, when
it comes back (the connectivity monitor is forced online, so only the hub's link decides)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.agentproc import Agent, ip
from support.fleetproc import NatsServer, arrived_in_order, make_receipts, receipt_ids

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("ip") is None,
        reason="needs Linux, root and iproute2 to create network namespaces",
    ),
]


@pytest.fixture
def far_hub(tmp_path: Path, agent_namespace: tuple[str, str, str]) -> Iterator[NatsServer]:
    _, _, host_address = agent_namespace
    server = NatsServer(tmp_path / "js", listen=host_address).start()
    yield server
    server.stop()


def test_receipts_cross_a_cut_link_once_and_in_order(
    agent_namespace: tuple[str, str, str], far_hub: NatsServer, agent_factory: Callable[..., Agent]
) -> None:
    ns, veth_agent, _ = agent_namespace
    env = {
        "WAYSTATION_FLEET__URL": far_hub.url,
        "WAYSTATION_FLEET__HOST": "edge-ns",
        "WAYSTATION_CONNECTIVITY__MODE": "online",
    }
    agent = agent_factory(env).start()
    make_receipts(agent, 10)
    arrived_in_order(far_hub, agent, "edge-ns")
    ip("-n", ns, "link", "set", veth_agent, "down")
    make_receipts(agent, 25)
    time.sleep(3.0)
    assert len(receipt_ids(far_hub.url, "edge-ns")) <= 11  # at most the one in flight got through
    ip("-n", ns, "link", "set", veth_agent, "up")
    make_receipts(agent, 5)
    arrived_in_order(far_hub, agent, "edge-ns", timeout=90)
