"""`[fleet]` settings: off unless url is set, checked by name; the credentials file is named by
its path, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from waystation.config import FleetSettings, Paths, check_fleet_creds, fleet_host
from waystation.config_load import load_settings
from waystation.errors import ConfigError


def settings(tmp_path: Path, toml: str) -> FleetSettings:
    (tmp_path / "config.toml").write_text(toml)
    return load_settings(Paths.resolve({"WAYSTATION_HOME": str(tmp_path)}), {}).fleet


def test_off_by_default(tmp_path: Path) -> None:
    fleet = settings(tmp_path, "")
    assert fleet == FleetSettings() and fleet.url == ""


def test_values_from_the_file_and_the_environment(tmp_path: Path) -> None:
    fleet = settings(tmp_path, '[fleet]\nurl = "nats://hub:4222"\nhost = "edge-7"\ncreds = "/etc/ws.creds"\n')
    assert (fleet.url, fleet.host, fleet.creds) == ("nats://hub:4222", "edge-7", "/etc/ws.creds")
    (tmp_path / "config.toml").write_text("")
    env = {"WAYSTATION_FLEET__URL": "tls://hub:4222", "WAYSTATION_FLEET__HOST": "edge-8"}
    paths = Paths.resolve({"WAYSTATION_HOME": str(tmp_path)})
    assert load_settings(paths, env).fleet.host == "edge-8"


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[fleet]\nurl = "http://hub:4222"\n', "fleet.url"),
        ('[fleet]\nhost = "edge.7"\n', "fleet.host"),
        ('[fleet]\nhost = "edge *"\n', "fleet.host"),
        ("[fleet]\nport = 4222\n", "fleet.port"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings(tmp_path, toml)
    assert info.value.key == key


def test_the_default_host_is_the_hostnames_first_label_as_a_subject_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "laptop 3.example.org")
    assert fleet_host(FleetSettings()) == "laptop-3"
    assert fleet_host(FleetSettings(host="given")) == "given"


def test_a_missing_or_foreign_creds_file_is_named_never_shown(tmp_path: Path) -> None:
    missing = tmp_path / "nope.creds"
    with pytest.raises(ConfigError) as info:
        check_fleet_creds(FleetSettings(url="nats://h", creds=str(missing)))
    assert info.value.key == "fleet.creds" and str(missing) in info.value.message
    foreign = tmp_path / "x.creds"
    foreign.write_text("SUAM-very-secret-seed\n")
    with pytest.raises(ConfigError) as info:
        check_fleet_creds(FleetSettings(url="nats://h", creds=str(foreign)))
    assert "very-secret" not in info.value.message and "not a NATS credentials file" in info.value.message
    good = tmp_path / "user.creds"
    good.write_text(
        "-----BEGIN NATS USER JWT-----\neyJ0\n------END NATS USER JWT------\n"
        "-----BEGIN USER NKEY SEED-----\nSUAM\n------END USER NKEY SEED------\n"
    )
    check_fleet_creds(FleetSettings(url="nats://h", creds=str(good)))


def test_a_password_holding_an_at_sign_is_masked_whole() -> None:
    from waystation.adapters.fleet.hub import safe_url

    assert safe_url("nats://user:p@ss@hub.example:4222") == "nats://user:xxxxx@hub.example:4222"
    assert safe_url("nats://hub.example:4222") == "nats://hub.example:4222"
