"""Signed checkpoints with a real agent and the real command line (issue 14): the agent signs at
start and stop and keeps the last checkpoint, the API serves checkpoints, proofs and the key, a
proof checks out in a fresh process that has only the key, and receipts removed while the agent
was down are named on the next verify, the kept checkpoint never overwritten by the shorter tree.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

from support.agentproc import Agent, cli_process, make_home, remove_home

URL = "http://127.0.0.1:9/x"


def receipts_of_cancelled_tasks(agent: Agent, n: int) -> list[str]:
    ids = []
    for i in range(n):
        task = agent.api("POST", "/v1/tasks", json={"tool": "web_fetch", "args": {"url": f"{URL}{i}"}}).json()
        assert agent.api("POST", f"/v1/tasks/{task['id']}/cancel").status_code == 200
        ids.append(task["id"])
    return [r["id"] for r in agent.api("GET", "/v1/receipts").json()]


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli_process(home, *args)


def test_the_agent_signs_serves_and_proves(agent_factory: Callable[..., Agent], tmp_path: Path) -> None:
    agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline"}).start()
    home = agent.home
    assert (home / "receipts.key").stat().st_mode & 0o777 == 0o600
    assert (home / "receipts.checkpoint").read_text().split("\n")[1] == "0"  # signed at start
    receipt_ids = receipts_of_cancelled_tasks(agent, 5)

    checkpoint = agent.api("GET", "/v1/receipts/checkpoint").json()
    assert set(checkpoint) == {"origin", "size", "root_hash", "note"} and checkpoint["size"] == 5
    key = agent.api("GET", "/v1/receipts/key").json()["key"]
    assert key.startswith(checkpoint["origin"] + "+")
    assert cli(home, "receipts", "key").stdout.strip() == key

    verified = agent.api("POST", "/v1/receipts/verify", json={"checkpoint": checkpoint["note"]}).json()
    assert verified["ok"] and verified["checkpoint"]["size"] == 5
    assert agent.api("POST", "/v1/receipts/verify", json={"checkpoint": 7}).status_code == 400

    proved = cli(home, "receipts", "prove", receipt_ids[1], "--json")
    assert proved.returncode == 0, proved.stderr
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(proved.stdout)
    assert json.loads(proved.stdout)["leaf_index"] == 1

    # An auditor elsewhere: another home with nothing in it, no agent, only the key.
    elsewhere = make_home()
    try:
        checked = cli(elsewhere, "receipts", "verify-proof", str(proof_file), "--key", key)
        assert checked.returncode == 0, checked.stderr
        assert f"receipt {receipt_ids[1]} is leaf 1" in checked.stdout
        assert not (elsewhere / "waystation.db").exists() and not (elsewhere / "receipts.key").exists()
        forged = json.loads(proved.stdout)
        forged["receipt"]["reason"] = "delivered"
        proof_file.write_text(json.dumps(forged))
        refused = cli(elsewhere, "receipts", "verify-proof", str(proof_file), "--key", key)
        assert refused.returncode == 1 and "edited" in refused.stderr
    finally:
        remove_home(elsewhere)

    assert agent.stop() == 0
    kept = (home / "receipts.checkpoint").read_text()
    assert kept.split("\n")[1] == "5"  # signed again at stop


def test_receipts_removed_while_the_agent_was_down_are_named(agent_factory: Callable[..., Agent]) -> None:
    agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline"}).start()
    receipts_of_cancelled_tasks(agent, 6)
    assert agent.stop() == 0
    kept = (agent.home / "receipts.checkpoint").read_text()

    with sqlite3.connect(agent.database) as conn:  # the last two receipts, gone
        conn.execute("DELETE FROM receipts WHERE seq > 4")
    conn.close()

    agent.start()
    assert (agent.home / "receipts.checkpoint").read_text() == kept  # not replaced by the shorter tree
    assert "no longer extend the stored checkpoint" in agent.output()
    verify = cli(agent.home, "receipts", "verify")
    assert verify.returncode == 1
    assert "truncated or rolled back" in verify.stderr and "holds 4" in verify.stderr
    # The agent goes on recording; the kept checkpoint still names what went missing.
    receipts_of_cancelled_tasks(agent, 1)
    assert cli(agent.home, "receipts", "verify").returncode == 1


def test_a_damaged_signing_key_stops_the_signing_not_the_agent(agent_factory: Callable[..., Agent]) -> None:
    """A receipts.key cut short (or overwritten) crash-looped the agent with a traceback. It starts,
    says why in one log line, in `status` and `doctor`, and tasks are taken and settled; the file
    is left for a restore, and moving it away signs again with a new key, without a restart."""
    agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline"}).start()
    key_file = agent.home / "receipts.key"
    pem = key_file.read_bytes()
    agent.stop()
    for damaged in (pem[: len(pem) // 2], b"\x00garbage\xff" * 8):
        key_file.write_bytes(damaged)
        agent.start()
        task = agent.api("POST", "/v1/tasks", json={"tool": "web_fetch", "args": {"url": URL}})
        assert task.status_code == 201, task.text
        assert agent.api("POST", f"/v1/tasks/{task.json()['id']}/cancel").status_code == 200
        signing = agent.api("GET", "/v1/status").json()["signing"]
        assert (
            signing["ok"] is False
            and str(key_file) in signing["error"]
            and "move it away" in signing["error"]
        )
        shown = cli(agent.home, "status")
        assert shown.returncode == 0 and "not signed" in shown.stdout, shown.stdout
        refused = agent.api("GET", "/v1/receipts/checkpoint")
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "signing_key_unusable"
        assert agent.stop() == 0
        assert key_file.read_bytes() == damaged  # never replaced: it may be restored
    run = agent.output().rsplit("===== run", 1)[1]
    said = [line for line in run.splitlines() if str(key_file) in line and '"level": "error"' in line]
    assert "Traceback" not in run and len(said) == 1, run  # one line says it

    key_file.rename(agent.home / "receipts.key.damaged")
    agent.start()
    assert agent.api("GET", "/v1/status").json()["signing"] == {"ok": True, "error": None}
    assert agent.api("GET", "/v1/receipts/checkpoint").status_code == 200


def test_doctor_names_a_damaged_signing_key_and_makes_none(tmp_path: Path) -> None:
    from waystation.cli.commands.doctor import check_signing_key
    from waystation.config import Paths

    paths = Paths.resolve({"WAYSTATION_HOME": str(tmp_path)})
    assert check_signing_key(paths).level == "ok" and not (tmp_path / "receipts.key").exists()
    (tmp_path / "receipts.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2Vw")
    check = check_signing_key(paths)
    assert check.level == "fail" and str(tmp_path / "receipts.key") in check.message
