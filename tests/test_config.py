"""Settings from config.toml and WAYSTATION_* overrides, and where the state lives."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from waystation.config import (
    AgentSettings,
    ConnectivitySettings,
    ModelSettings,
    Paths,
    QueueSettings,
    Settings,
)
from waystation.config_load import load_settings
from waystation.errors import ConfigError, WaystationError


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def _paths(home: Path, toml: str | bytes | None = None) -> Paths:
    paths = Paths.resolve({"WAYSTATION_HOME": str(home)})
    if toml is not None:
        home.mkdir(parents=True, exist_ok=True)
        data = toml.encode() if isinstance(toml, str) else toml
        paths.config_file.write_bytes(data)
    return paths


def _error(paths: Paths, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(paths, env or {})
    err = info.value
    assert isinstance(err, WaystationError)
    assert "\n" not in str(err), "a config error is one line"
    assert err.exit_code == 1
    return err


# --- values --------------------------------------------------------------------------------------


def test_defaults_without_a_file(home: Path) -> None:
    paths = _paths(home)
    assert not paths.config_file.exists()
    settings = load_settings(paths, {})
    assert settings == Settings()
    assert settings.agent.default_route == "local"
    assert settings.model == ModelSettings(path="", backend="auto", idle_unload_s=300.0)
    assert settings.connectivity.mode == "auto"
    assert settings.connectivity.expect_status == 204
    assert settings.connectivity.probe_timeout_s == 3.0
    q = settings.queue
    assert (q.max_attempts, q.backoff_base_s, q.backoff_max_s, q.retention_days, q.concurrency) == (
        8,
        2.0,
        3600.0,
        7.0,
        4,
    )


def test_an_empty_file_gives_the_defaults(home: Path) -> None:
    assert load_settings(_paths(home, ""), {}) == Settings()


def test_values_from_the_file(home: Path) -> None:
    paths = _paths(
        home,
        """
        [agent]
        default_route = "anthropic"

        [model]
        path = "/models/smol.gguf"
        backend = "llamacpp"
        idle_unload_s = 0

        [connectivity]
        mode = "offline"
        probe_url = "http://127.0.0.1:9/probe"
        expect_status = 200
        probe_timeout_s = 1.5

        [queue]
        max_attempts = 3
        backoff_base_s = 5
        backoff_max_s = 60
        retention_days = 0.5
        concurrency = 2
        per_host = 1
        """,
    )
    s = load_settings(paths, {})
    assert s.agent == AgentSettings(default_route="anthropic")
    assert s.model == ModelSettings(path="/models/smol.gguf", backend="llamacpp", idle_unload_s=0.0)
    assert s.connectivity.mode == "offline"
    assert s.connectivity.probe_url == "http://127.0.0.1:9/probe"
    assert s.connectivity.expect_status == 200
    assert s.connectivity.probe_timeout_s == 1.5
    assert s.queue == QueueSettings(
        max_attempts=3, backoff_base_s=5.0, backoff_max_s=60.0, retention_days=0.5, concurrency=2, per_host=1
    )
    # integers are accepted where seconds are floats, and stored as floats
    assert isinstance(s.queue.backoff_base_s, float)
    # keys the file does not name keep their defaults
    assert s.connectivity.online_probe_interval_s == ConnectivitySettings().online_probe_interval_s


def test_env_overrides_the_file(home: Path) -> None:
    paths = _paths(home, "[queue]\nconcurrency = 2\nmax_attempts = 5\n")
    s = load_settings(paths, {"WAYSTATION_QUEUE__CONCURRENCY": "8"})
    assert s.queue.concurrency == 8
    assert s.queue.max_attempts == 5  # the file's other keys still apply


def test_env_values_are_typed(home: Path) -> None:
    s = load_settings(
        _paths(home),
        {
            "WAYSTATION_CONNECTIVITY__PROBE_URL": "https://example.test/generate_204",
            "WAYSTATION_CONNECTIVITY__MODE": "online",
            "WAYSTATION_CONNECTIVITY__PROBE_TIMEOUT_S": "2.5",
            "WAYSTATION_QUEUE__BACKOFF_BASE_S": "1",
            "WAYSTATION_MODEL__PATH": "",
            "WAYSTATION_AGENT__DEFAULT_ROUTE": '"openai"',
        },
    )
    assert s.connectivity.probe_url == "https://example.test/generate_204"
    assert s.connectivity.mode == "online"
    assert s.connectivity.probe_timeout_s == 2.5
    assert s.queue.backoff_base_s == 1.0
    assert s.model.path == ""
    assert s.agent.default_route == "openai"


def test_env_text_for_a_string_setting_is_kept_as_text(home: Path) -> None:
    """TOML would read these as a number and a date; the settings want the text."""
    s = load_settings(
        _paths(home),
        {
            "WAYSTATION_AGENT__SOCKET_GROUP": "1000",
            "WAYSTATION_MODEL__PATH": "2024-01-01",
            "WAYSTATION_ROUTES__COMPATIBLE__MODEL": "3.5",
        },
    )
    assert s.agent.socket_group == "1000"
    assert s.model.path == "2024-01-01"
    assert s.routes["compatible"].model == "3.5"


def test_env_without_a_double_underscore_is_not_a_setting(home: Path) -> None:
    env = {
        "WAYSTATION_HOME": str(home),
        "WAYSTATION_SOCKET": str(home / "s.sock"),
        "WAYSTATION_DEBUG": "1",
        "OTHER_QUEUE__CONCURRENCY": "0",
    }
    assert load_settings(_paths(home), env) == Settings()


def test_env_is_read_from_os_environ_by_default(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAYSTATION_QUEUE__CONCURRENCY", "6")
    assert load_settings(_paths(home)).queue.concurrency == 6


# --- errors name the key -------------------------------------------------------------------------


def test_unknown_section_is_named(home: Path) -> None:
    err = _error(_paths(home, "[queues]\nconcurrency = 2\n"))
    assert err.key == "queues"
    assert "queues" in str(err)


def test_unknown_key_is_named(home: Path) -> None:
    err = _error(_paths(home, "[queue]\nconcurency = 2\n"))
    assert err.key == "queue.concurency"
    assert "queue.concurency" in str(err)


def test_unknown_key_from_env_is_named(home: Path) -> None:
    err = _error(_paths(home), {"WAYSTATION_QUEUE__NOPE": "1"})
    assert "queue.nope" in str(err)
    err = _error(_paths(home), {"WAYSTATION_NOWHERE__X": "1"})
    assert "nowhere" in str(err)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[queue]\nconcurrency = "four"\n', "queue.concurrency"),
        ("[queue]\nconcurrency = 2.5\n", "queue.concurrency"),
        ("[queue]\nconcurrency = true\n", "queue.concurrency"),
        ("[queue]\nbackoff_base_s = true\n", "queue.backoff_base_s"),
        ("[queue]\nbackoff_base_s = [1, 2]\n", "queue.backoff_base_s"),
        ("[connectivity]\nprobe_url = 204\n", "connectivity.probe_url"),
        ("[model]\npath = {a = 1}\n", "model.path"),
    ],
)
def test_wrong_type_is_named(home: Path, toml: str, key: str) -> None:
    err = _error(_paths(home, toml))
    assert err.key == key
    assert key in str(err)


def test_wrong_type_from_env_is_named(home: Path) -> None:
    err = _error(_paths(home), {"WAYSTATION_QUEUE__CONCURRENCY": "many"})
    assert "queue.concurrency" in str(err)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[connectivity]\nmode = "sometimes"\n', "connectivity.mode"),
        ('[model]\nbackend = "cuda"\n', "model.backend"),
    ],
)
def test_bad_literal_is_named(home: Path, toml: str, key: str) -> None:
    err = _error(_paths(home, toml))
    assert err.key == key
    assert "sometimes" in str(err) or "cuda" in str(err)


def test_bad_literal_from_env_is_named(home: Path) -> None:
    err = _error(_paths(home), {"WAYSTATION_CONNECTIVITY__MODE": "sometimes"})
    assert "connectivity.mode" in str(err)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[queue]\nconcurrency = 0\n", "queue.concurrency"),
        ("[queue]\nconcurrency = -3\n", "queue.concurrency"),
        ("[queue]\nmax_attempts = 0\n", "queue.max_attempts"),
        ("[queue]\nper_host = 0\n", "queue.per_host"),
        ("[queue]\nbackoff_base_s = 0\n", "queue.backoff_base_s"),
        ("[queue]\nretention_days = -1\n", "queue.retention_days"),
        ("[queue]\nbackoff_base_s = 100\nbackoff_max_s = 10\n", "queue.backoff_max_s"),
        ("[model]\nidle_unload_s = -1\n", "model.idle_unload_s"),
        ("[model]\nmax_loaded = -1\n", "model.max_loaded"),
        ("[model]\nmax_loaded = 65\n", "model.max_loaded"),
        ("[model]\nmemory_budget_mb = -5\n", "model.memory_budget_mb"),
        ("[model]\nkeep_free_mb = -1\n", "model.keep_free_mb"),
        ("[connectivity]\nexpect_status = 42\n", "connectivity.expect_status"),
        ("[connectivity]\nexpect_status = 600\n", "connectivity.expect_status"),
        ("[connectivity]\nprobe_timeout_s = 0\n", "connectivity.probe_timeout_s"),
        ('[connectivity]\nprobe_url = "ftp://example.test/"\n', "connectivity.probe_url"),
    ],
)
def test_out_of_range_is_named(home: Path, toml: str, key: str) -> None:
    err = _error(_paths(home, toml))
    assert err.key == key
    assert key in str(err)


def test_hosts_a_model_may_reach_and_write_to(home: Path) -> None:
    toml = '[tools]\nallow_hosts = ["api.example.org"]\nallow_writes = ["hooks.example:8080", "[::1]:9000"]\n'
    tools = load_settings(_paths(home, toml), {}).tools
    assert tools.allow_hosts == ("api.example.org",)
    assert tools.allow_writes == ("hooks.example:8080", "[::1]:9000")
    env = {"WAYSTATION_TOOLS__ALLOW_WRITES": '["127.0.0.1", "fe80::1"]'}
    assert load_settings(_paths(home, toml), env).tools.allow_writes == ("127.0.0.1", "fe80::1")
    assert Settings().tools.allow_writes == ()


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ("https://hooks.example", "tools.allow_writes"),
        ("hooks.example/hook", "tools.allow_writes"),
        ("hooks.example:0", "tools.allow_writes"),
        ("hooks.example:70000", "tools.allow_writes"),
        ("", "tools.allow_hosts"),
        ("two words", "tools.allow_hosts"),
    ],
)
def test_a_host_entry_that_could_never_match_is_named(home: Path, entry: str, key: str) -> None:
    err = _error(_paths(home, f"[tools]\n{key.split('.')[1]} = [{json.dumps(entry)}]\n"))
    assert err.key == key
    assert repr(entry) in str(err) and '"host" or "host:port"' in str(err)


def test_allow_writes_from_env_must_be_a_list(home: Path) -> None:
    err = _error(_paths(home), {"WAYSTATION_TOOLS__ALLOW_WRITES": "hooks.example"})
    assert err.key == "tools.allow_writes" and "list of strings" in str(err)


def test_out_of_range_from_env_is_named(home: Path) -> None:
    err = _error(_paths(home, "[queue]\nconcurrency = 4\n"), {"WAYSTATION_QUEUE__CONCURRENCY": "0"})
    assert "queue.concurrency" in str(err)


def test_invalid_toml_names_the_file(home: Path) -> None:
    paths = _paths(home, "[queue\nconcurrency = = 2\n")
    err = _error(paths)
    assert str(paths.config_file) in str(err)
    assert "TOML" in str(err)


def test_a_file_that_is_not_utf8_names_the_file(home: Path) -> None:
    paths = _paths(home, b"[queue]\nconcurrency = 2\n# caf\xe9 \xff\n")
    err = _error(paths)
    assert str(paths.config_file) in str(err)


def test_a_top_level_value_is_named(home: Path) -> None:
    err = _error(_paths(home, "concurrency = 2\n"))
    assert "concurrency" in str(err)


def test_an_unreadable_config_path_names_the_file(home: Path) -> None:
    paths = _paths(home)
    paths.config_file.mkdir(parents=True)  # a directory where the file should be
    err = _error(paths)
    assert str(paths.config_file) in str(err)


# --- paths ---------------------------------------------------------------------------------------


def test_waystation_home_holds_all_state(tmp_path: Path) -> None:
    paths = Paths.resolve({"WAYSTATION_HOME": str(tmp_path)})
    assert paths == Paths(
        config_file=tmp_path / "config.toml",
        database=tmp_path / "waystation.db",
        socket=tmp_path / "waystation.sock",
        logs=tmp_path / "logs",
    )


def test_waystation_home_expands_the_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    paths = Paths.resolve({"WAYSTATION_HOME": "~/ws"})
    assert paths.database == tmp_path / "ws" / "waystation.db"


def test_waystation_socket_overrides_the_socket_alone(tmp_path: Path) -> None:
    sock = tmp_path / "elsewhere" / "agent.sock"
    paths = Paths.resolve({"WAYSTATION_HOME": str(tmp_path / "h"), "WAYSTATION_SOCKET": str(sock)})
    assert paths.socket == sock
    assert paths.database == tmp_path / "h" / "waystation.db"
    assert paths.config_file == tmp_path / "h" / "config.toml"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG directories are the Linux layout")
def test_platform_dirs_without_waystation_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    runtime = tmp_path / "run"
    paths = Paths.resolve({"XDG_RUNTIME_DIR": str(runtime)})
    assert paths.config_file == tmp_path / "cfg" / "waystation" / "config.toml"
    assert paths.database == tmp_path / "data" / "waystation" / "waystation.db"
    assert paths.socket == runtime / "waystation" / "waystation.sock"
    assert paths.logs.is_relative_to(tmp_path / "state")

    with_socket = Paths.resolve({"XDG_RUNTIME_DIR": str(runtime), "WAYSTATION_SOCKET": str(tmp_path / "s")})
    assert with_socket.socket == tmp_path / "s"
    assert with_socket.database == paths.database


def test_paths_read_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAYSTATION_HOME", str(tmp_path))
    monkeypatch.delenv("WAYSTATION_SOCKET", raising=False)
    assert Paths.resolve().database == tmp_path / "waystation.db"


def test_an_empty_waystation_home_means_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    paths = Paths.resolve({"WAYSTATION_HOME": ""})
    assert paths.database.is_relative_to(tmp_path / "data")
