"""Which work from the hub a host takes (adapters/fleet/work.py), in-process: signed by a trusted
key in golang.org/x/mod/sumdb/note's formats, naming only listed secrets, reaching only allowed
hosts (issue 20, item 1)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from support.agentproc import agent_env, make_home, remove_home

from waystation.adapters.fleet import work
from waystation.config import FleetSettings, Paths
from waystation.config_load import load_settings
from waystation.errors import BadCheckpoint, ConfigError
from waystation.receipts.checkpoints import SigningKey, VerifierKey

# golang.org/x/mod/sumdb/note's own example (note.go's package documentation): its keys, and the
# signature it makes over this text. Ed25519 is deterministic, so ours must be the same bytes.
GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
GO_SIGNATURE = (
    "\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
)


def test_keys_and_signatures_are_go_sumdb_notes_byte_for_byte() -> None:
    key = SigningKey.parse_private(GO_SIGNER)
    assert str(key.verifier) == GO_VERIFIER and key.private_text() == GO_SIGNER
    assert key.signature_line(GO_TEXT) == GO_SIGNATURE
    VerifierKey.parse(GO_VERIFIER).check(GO_TEXT, [GO_SIGNATURE])
    with pytest.raises(BadCheckpoint):
        SigningKey.parse_private(GO_SIGNER.replace("c74f20a3", "c74f20a4"))


BODY = json.dumps({"tool": "http_request", "args": {"method": "GET", "url": "https://example.com/"}}).encode()


def test_only_work_signed_by_a_listed_key_over_its_body_is_taken() -> None:
    ops, other = SigningKey.generate("ops"), SigningKey.generate("ops")
    trusted = [ops.verifier]
    signature = work.sign_work(BODY, ops)[work.SIGNATURE_HEADER]
    assert work.signature_refusal(BODY, signature, trusted) is None
    assert "unsigned" in str(work.signature_refusal(BODY, None, trusted))
    assert "lists no key" in str(work.signature_refusal(BODY, signature, []))
    tampered = BODY.replace(b"example.com", b"example.net")
    assert "bad signature" in str(work.signature_refusal(tampered, signature, trusted))
    foreign = work.sign_work(BODY, other)[work.SIGNATURE_HEADER]  # same name, another key
    assert "no key" in str(work.signature_refusal(BODY, foreign, trusted))
    assert work.signature_refusal(BODY, "garbage", trusted) is not None
    assert work.signature_refusal(b"\xff", signature, trusted) == "the body is not UTF-8 text"


def test_secrets_must_be_listed() -> None:
    args = {"headers": {"a": {"secret": "PAYMENTS_TOKEN"}, "b": {"secret": "HF_TOKEN"}, "c": "plain"}}
    assert work.referenced_secrets(args) == {"PAYMENTS_TOKEN", "HF_TOKEN"}
    assert "HF_TOKEN, PAYMENTS_TOKEN" in str(work.secrets_refusal(args, ()))
    assert "HF_TOKEN" in str(work.secrets_refusal(args, ("PAYMENTS_TOKEN",)))
    assert work.secrets_refusal(args, ("PAYMENTS_TOKEN", "HF_TOKEN")) is None
    assert work.secrets_refusal({"headers": {"a": "x"}}, ()) is None


@pytest.mark.parametrize(
    ("destination", "addresses"),
    [
        ("127.0.0.1:8080", ()),
        ("localhost", ()),
        ("api.localhost", ()),
        ("169.254.169.254", ()),  # cloud metadata
        ("10.0.0.7", ()),
        ("[::1]:9", ()),
        ("[::ffff:127.0.0.1]", ()),
        ("[fd00::1]", ()),
        ("0.0.0.0", ()),
        ("intranet.example", ("93.184.216.34", "192.168.1.9")),  # a public name for a LAN address
    ],
)
def test_inner_destinations_need_listing(destination: str, addresses: tuple[str, ...]) -> None:
    assert "work_hosts" in str(work.destination_refusal(destination, 443, addresses, ()))
    assert work.destination_refusal(destination, 443, addresses, (destination,)) is None


def test_a_host_list_is_an_allow_list() -> None:
    assert work.destination_refusal("example.com", 443, ("93.184.216.34",), ()) is None
    assert "does not list" in str(work.destination_refusal("example.com", 443, (), ("example.org",)))
    assert work.destination_refusal("example.com", 443, (), ("EXAMPLE.com:443",)) is None
    assert work.destination_refusal("example.com:8443", 443, (), ("example.com:443",)) is not None
    assert work.destination_refusal("127.0.0.1:8080", 80, (), ("127.0.0.1",)) is None


def test_settings_check_the_keys_secrets_and_hosts(tmp_path: Path) -> None:
    def fleet(toml: str) -> FleetSettings:
        (tmp_path / "config.toml").write_text(toml)
        return load_settings(Paths.resolve({"WAYSTATION_HOME": str(tmp_path)}), {}).fleet

    assert fleet("").work_keys == () and fleet("").work_secrets == () and fleet("").work_hosts == ()
    good = fleet(f'[fleet]\nwork_keys = ["{GO_VERIFIER}"]\nwork_secrets = ["A"]\nwork_hosts = ["10.0.0.1"]\n')
    assert good.work_keys == (GO_VERIFIER,)
    for toml, key in [
        (
            '[fleet]\nwork_keys = ["PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"]\n',
            "work_keys",
        ),
        ('[fleet]\nwork_secrets = ["no spaces"]\n', "work_secrets"),
        ('[fleet]\nwork_hosts = ["https://x/"]\n', "work_hosts"),
    ]:
        with pytest.raises(ConfigError) as info:
            fleet(toml)
        assert info.value.key == f"fleet.{key}"


def test_keygen_writes_a_0600_private_key_and_prints_its_verifier(tmp_path: Path) -> None:
    home = make_home()
    try:
        key_file = tmp_path / "ops.key"

        def keygen() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "waystation",
                    "fleet",
                    "keygen",
                    "ops@example.org",
                    "--key-file",
                    str(key_file),
                ],
                env=agent_env(home),
                capture_output=True,
                text=True,
                timeout=30,
            )

        made = keygen()
        assert made.returncode == 0, made.stderr
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = SigningKey.parse_private(key_file.read_text())
        assert made.stdout == f"{key.verifier}\n" and made.stdout.startswith("ops@example.org+")
        again = keygen()  # never overwritten
        assert again.returncode != 0 and "exists" in again.stderr
        assert SigningKey.parse_private(key_file.read_text()).verifier == key.verifier
    finally:
        remove_home(home)
