"""The receipts' origin outlives a renamed host and a lost receipts.pub (issue 25).

A power cut left `receipts.pub` empty; the next start, under another hostname, rebuilt it with the
new hostname and replaced the kept checkpoint of the old origin without checking that the
receipts extend it. Here the host really is renamed between two starts of a real agent (its own
UTS namespace), and receipts.pub is emptied or removed in between: the origin stays the one the
kept checkpoint names, and `receipts verify` passes. A kept checkpoint of another origin is never
replaced: `status` and the log say why checkpoints are not kept.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support import agentproc
from support.agentproc import Agent
from support.inproc import run_cli

from waystation.receipts import proofs
from waystation.receipts.checkpoints import Checkpoint, SigningKey, VerifierKey

OFFLINE = {"WAYSTATION_CONNECTIVITY__MODE": "offline"}
AGENT_COMMAND = list(agentproc.AGENT_COMMAND)  # as it was before a test wrapped it


def _can_rename_host() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(["unshare", "--uts", "hostname", "ws-probe"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


needs_uts = pytest.mark.skipif(
    not _can_rename_host(), reason="renaming the host needs `unshare --uts` (root, or a user namespace)"
)


def start_as(agent: Agent, hostname: str, monkeypatch: pytest.MonkeyPatch) -> Agent:
    """Start the agent on a host named `hostname` (a UTS namespace of its own)."""
    rename = ["unshare", "--uts", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh"]
    monkeypatch.setattr(agentproc, "AGENT_COMMAND", [*rename, *AGENT_COMMAND])
    return agent.start()


def settle_receipts(agent: Agent, n: int) -> None:
    for i in range(n):
        task = agent.api(
            "POST", "/v1/tasks", json={"tool": "web_fetch", "args": {"url": f"http://127.0.0.1:9/{i}"}}
        )
        assert agent.api("POST", f"/v1/tasks/{task.json()['id']}/cancel").status_code == 200


def kept_origin(home: Path) -> str:
    return (home / "receipts.checkpoint").read_text().split("\n")[0]


@needs_uts
@pytest.mark.parametrize("loss", ["emptied", "removed"])
def test_a_renamed_host_keeps_the_origin_when_receipts_pub_is_lost(
    agent_factory: Callable[..., Agent], monkeypatch: pytest.MonkeyPatch, loss: str
) -> None:
    agent = start_as(agent_factory(OFFLINE), "edge-old", monkeypatch)
    settle_receipts(agent, 3)
    assert agent.stop() == 0
    pub = agent.home / "receipts.pub"
    assert pub.read_text().startswith("waystation/edge-old+")
    assert kept_origin(agent.home) == "waystation/edge-old"
    if loss == "emptied":
        pub.write_text("")  # what a power cut left before the write was durable
    else:
        pub.unlink()

    start_as(agent, "edge-new", monkeypatch)
    settle_receipts(agent, 2)
    key = agent.api("GET", "/v1/receipts/key").json()["key"]
    assert key.startswith("waystation/edge-old+"), key
    assert pub.read_text() == key + "\n"  # rebuilt from the key, with the kept origin
    assert agent.api("GET", "/v1/status").json()["signing"] == {"ok": True, "error": None}
    assert agent.stop() == 0
    kept = (agent.home / "receipts.checkpoint").read_text()
    assert kept.split("\n")[:2] == ["waystation/edge-old", "5"]  # signed again at stop, same origin
    verified = run_cli(agent.home, "receipts", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_kept_checkpoint_of_another_origin_is_never_replaced(agent_factory: Callable[..., Agent]) -> None:
    agent = agent_factory(OFFLINE).start()
    settle_receipts(agent, 2)
    assert agent.stop() == 0
    pub = agent.home / "receipts.pub"
    old = VerifierKey.parse(pub.read_text())
    pub.write_text(f"{VerifierKey('waystation/elsewhere', old.public)}\n")  # a restore from another host
    checkpoint = agent.home / "receipts.checkpoint"
    before = checkpoint.read_text()

    agent.start()
    signing = agent.api("GET", "/v1/status").json()["signing"]
    assert not signing["ok"]
    assert f"it is for {old.name}" in signing["error"] and "waystation/elsewhere" in signing["error"]
    assert checkpoint.read_text() == before
    assert agent.stop() == 0
    assert checkpoint.read_text() == before  # nor at stop
    assert "checkpoints of the receipts will not be kept" in agent.output()


def test_a_lost_receipts_pub_takes_the_origin_of_the_checkpoint_the_key_signed(tmp_path: Path) -> None:
    """In process, no agent: the rebuilt name comes from a checkpoint this key signed, and only then."""
    key = SigningKey.load_or_create(tmp_path, "edge-old")
    proofs.store_note(tmp_path, key.sign(Checkpoint(key.name, 0, hashlib.sha256(b"").digest()).text()))
    pub = tmp_path / "receipts.pub"
    pub.write_text("")
    assert SigningKey.load_or_create(tmp_path, "edge-new").name == "waystation/edge-old"
    assert pub.read_text() == f"{key.verifier}\n"

    forger = SigningKey.generate("waystation/forged")
    proofs.store_note(tmp_path, forger.sign(Checkpoint(forger.name, 0, hashlib.sha256(b"").digest()).text()))
    pub.unlink()
    assert SigningKey.load_or_create(tmp_path, "edge-new").name == "waystation/edge-new"  # not the forger's
