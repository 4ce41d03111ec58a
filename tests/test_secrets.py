"""Credentials never reach the logs, whole or in part, and keys come from where users expect."""

import io
import json
import os
from pathlib import Path

import pytest
import structlog

from waystation import logs
from waystation.config import Paths
from waystation.config_load import load_settings
from waystation.secrets import REDACTED, Redactor, api_key, known_secrets, warn_if_config_exposed

FAKE = "sk-proj-FAKEKEY0123456789abcdefXYZ"


def test_a_key_comes_from_its_environment_variable_before_the_config(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[routes.openai]\napi_key = "from-config-0123456789"\n')
    settings = load_settings(Paths.resolve({"WAYSTATION_HOME": str(tmp_path)}), {})
    assert api_key("openai", settings, {"OPENAI_API_KEY": FAKE}) == FAKE
    assert api_key("openai", settings, {}) == "from-config-0123456789"
    assert api_key("xai", settings, {}) is None


def test_known_secrets_include_env_keys_tokens_and_config_keys(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[routes.compatible]\napi_key = "cfg-secret-0123456789"\n')
    settings = load_settings(Paths.resolve({"WAYSTATION_HOME": str(tmp_path)}), {})
    env = {"ANTHROPIC_API_KEY": FAKE, "CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-TOKEN0123456789"}
    assert set(known_secrets(settings, env)) == {
        FAKE,
        "sk-ant-oat01-TOKEN0123456789",
        "cfg-secret-0123456789",
    }


@pytest.mark.parametrize("shown", [FAKE, FAKE[:12], FAKE[-10:], f"Bearer {FAKE[3:20]}..."])
def test_the_redactor_blanks_a_secret_whole_or_in_part(shown: str) -> None:
    redactor = Redactor([FAKE])
    assert redactor.redact(f"calling with {shown}") == REDACTED
    assert redactor.redact("nothing secret here at all") == "nothing secret here at all"


def test_log_lines_never_carry_a_configured_secret(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    logs.configure(secrets=[FAKE])
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(stream))
    log = structlog.get_logger("test")
    log.warning("provider said no", detail=f"key {FAKE[:9]}... rejected", header={"authorization": FAKE})
    try:
        raise RuntimeError(f"boom with {FAKE}")
    except RuntimeError:
        log.exception("failed")
    output = stream.getvalue()
    for i in range(len(FAKE) - 7):
        assert FAKE[i : i + 8] not in output
    assert "provider said no" in output
    json.loads(output.splitlines()[0])  # still JSON lines off a terminal
    structlog.reset_defaults()


def test_a_config_file_with_keys_readable_by_others_is_warned_about(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[routes.openai]\napi_key = "cfg-secret-0123456789"\n')
    os.chmod(config, 0o644)
    settings = load_settings(Paths.resolve({"WAYSTATION_HOME": str(tmp_path)}), {})
    with structlog.testing.capture_logs() as captured:
        warn_if_config_exposed(config, settings)
        os.chmod(config, 0o600)
        warn_if_config_exposed(config, settings)
    assert len(captured) == 1 and "chmod 600" in captured[0]["event"]
    assert "cfg-secret" not in str(captured)
