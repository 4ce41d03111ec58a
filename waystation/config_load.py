"""Reading `config.toml` and the `WAYSTATION_<SECTION>__<KEY>` overrides into Settings.

Every key is checked against its dataclass field's type, then the values whose type is not the
whole rule (ranges, URLs, host patterns) are checked too: a bad file, an unknown key or a value out
of range raises ConfigError naming the key, so the agent never starts half-configured. The
settings' shape itself lives in config.py; this module only reads and checks.
"""

from __future__ import annotations

import os
import tomllib
import typing
from typing import Any, Literal, get_args, get_origin

from waystation.config import (
    ENV_PREFIX,
    FLEET_HOST,
    FLEET_SCHEMES,
    HOST_ENTRY,
    OFF_BY_DEFAULT,
    ROUTE_NAMES,
    SECRET_NAME,
    FleetSettings,
    ModelSettings,
    Paths,
    RouteSettings,
    Settings,
)
from waystation.config_mcp import mcp_servers
from waystation.errors import BadCheckpoint, ConfigError
from waystation.receipts.checkpoints import VerifierKey


def load_settings(paths: Paths, env: typing.Mapping[str, str] | None = None) -> Settings:
    """Read the config file (if any), then apply environment overrides, validating each key."""
    env = os.environ if env is None else env
    raw: dict[str, dict[str, Any]] = {}
    if paths.config_file.exists():
        try:
            with paths.config_file.open("rb") as f:
                loaded = tomllib.load(f)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # TOML files are UTF-8
            raise ConfigError(str(paths.config_file), f"not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(str(paths.config_file), f"cannot read: {exc.strerror}") from None
        for section, values in loaded.items():
            if not isinstance(values, dict):
                raise ConfigError(section, "expected a [section] table")
            raw[section] = dict(values)
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section == "secrets":  # the override would lower-case the name; the variable is the source
            variable = name.split("__", 1)[1]
            raise ConfigError(
                name,
                f"set the secret as the environment variable {variable} and list it in [agent] env_secrets",
            )
        if section == "routes":  # WAYSTATION_ROUTES__CLAUDE_SEAT__ENABLED: route names use "-"
            route, _, key = key.partition("__")
            kind = typing.get_type_hints(RouteSettings).get(key)
            raw.setdefault("routes", {}).setdefault(route.replace("_", "-"), {})[key] = _from_env(value, kind)
            continue
        section_kind = typing.get_type_hints(Settings).get(section)
        kind = typing.get_type_hints(section_kind).get(key) if section_kind is not None else None
        raw.setdefault(section, {})[key] = _from_env(value, kind)
    return _build(raw)


def _from_env(value: str, kind: Any) -> Any:
    """An environment value for a setting of type `kind` (None: an unknown key, reported later).

    TOML parsing gives numbers and booleans their type, and what is not a TOML literal stays a
    string (refused later, with the key's name, where a number was due). A string setting keeps
    the text when it reads as another TOML type (a group named 1000, a path like 2024-01-01); a
    quoted TOML string is still unquoted."""
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value
    return value if kind is str and not isinstance(parsed, str) else parsed


def _build(raw: dict[str, dict[str, Any]]) -> Settings:
    hints = typing.get_type_hints(Settings)
    sections: dict[str, Any] = {}
    for section, values in raw.items():
        if section == "routes":
            sections["routes"] = _build_routes(values)
            continue
        if section == "secrets":
            sections["secrets"] = _build_secrets(values)
            continue
        if section == "mcp":
            sections["mcp_servers"] = mcp_servers(values)
            continue
        if section not in hints:
            raise ConfigError(section, f"unknown section; known: {', '.join(hints)}")
        cls = hints[section]
        sections[section] = cls(**_checked_keys(section, typing.get_type_hints(cls), values))
    settings = Settings(**sections)
    _check_ranges(settings)
    return settings


def _build_routes(raw: dict[str, Any]) -> dict[str, RouteSettings]:
    fields = typing.get_type_hints(RouteSettings)
    routes = {}
    for name, values in raw.items():
        if name not in ROUTE_NAMES:
            raise ConfigError(f"routes.{name}", f"unknown route; known: {', '.join(ROUTE_NAMES)}")
        if not isinstance(values, dict):
            raise ConfigError(f"routes.{name}", "expected a [routes.NAME] table")
        checked = {"enabled": name not in OFF_BY_DEFAULT, **_checked_keys(f"routes.{name}", fields, values)}
        routes[name] = RouteSettings(**checked)
    return routes


def _build_secrets(raw: dict[str, Any]) -> dict[str, str]:
    for name, value in raw.items():
        if not SECRET_NAME.fullmatch(name):
            raise ConfigError(f"secrets.{name}", "a name is a letter or _, then letters, digits, _ . or -")
        if not isinstance(value, str):  # the value itself is never shown: it may be the secret
            raise ConfigError(f"secrets.{name}", "expected a string")
    return dict(raw)


def _checked_keys(table: str, fields: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The values of one table, each checked against its field's type; an unknown key is refused."""
    checked = {}
    for key, value in values.items():
        dotted = f"{table}.{key}"
        if key not in fields:
            raise ConfigError(dotted, f"unknown key; known: {', '.join(fields)}")
        checked[key] = _check(dotted, fields[key], value)
    return checked


def _check(key: str, kind: Any, value: Any) -> Any:
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        if value not in choices:
            raise ConfigError(key, f"{value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    if kind is bool and isinstance(value, bool):
        return value
    if kind == tuple[str, ...]:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(key, f"expected a list of strings, got {value!r}")
    raise ConfigError(key, f"expected {kind.__name__}, got {value!r}")


# llama.cpp's own ceilings: GGML_MAX_N_THREADS, and a context (and batch) of 2^20 tokens, far
# beyond any model's training and any host's memory for the KV cache.
MAX_THREADS = 512
MAX_CONTEXT = 1 << 20
MAX_LOADED = 64  # each loaded model holds an owner thread and its own KV cache
MAX_PARALLEL = 256  # llama.cpp's LLAMA_MAX_SEQ


def _check_model_ranges(m: ModelSettings) -> None:
    if not 0 <= m.threads <= MAX_THREADS:
        raise ConfigError(
            "model.threads", f"must be 0 (one per physical core) to {MAX_THREADS}, got {m.threads}"
        )
    if m.gpu_layers < -1:
        raise ConfigError(
            "model.gpu_layers", f"must be -1 (all), 0 (none) or a number of layers, got {m.gpu_layers}"
        )
    if not 64 <= m.context <= MAX_CONTEXT:
        raise ConfigError("model.context", f"must be 64 to {MAX_CONTEXT} tokens, got {m.context}")
    if not 0 <= m.parallel <= MAX_PARALLEL:
        raise ConfigError(
            "model.parallel", f"must be 0 (one at a time) to {MAX_PARALLEL} sequences, got {m.parallel}"
        )
    if not 1 <= m.batch <= MAX_CONTEXT:
        raise ConfigError("model.batch", f"must be 1 to {MAX_CONTEXT} tokens, got {m.batch}")
    if not 0 <= m.max_loaded <= MAX_LOADED:
        raise ConfigError("model.max_loaded", f"must be 0 (3) to {MAX_LOADED} models, got {m.max_loaded}")
    if m.memory_budget_mb < 0:
        raise ConfigError(
            "model.memory_budget_mb", f"must be 0 (3/4 of the RAM) or more, got {m.memory_budget_mb}"
        )
    if m.saved_state_mb < 0:
        raise ConfigError("model.saved_state_mb", f"must be 0 (off) or more, got {m.saved_state_mb}")
    if m.keep_free_mb < 0:
        raise ConfigError(
            "model.keep_free_mb", f"must be 0 (the default reserve) or more, got {m.keep_free_mb}"
        )


def _check_ranges(s: Settings) -> None:
    positive = {
        "connectivity.probe_timeout_s": s.connectivity.probe_timeout_s,
        "connectivity.online_probe_interval_s": s.connectivity.online_probe_interval_s,
        "connectivity.offline_probe_max_s": s.connectivity.offline_probe_max_s,
        "queue.max_attempts": s.queue.max_attempts,
        "queue.backoff_base_s": s.queue.backoff_base_s,
        "queue.backoff_max_s": s.queue.backoff_max_s,
        "queue.retention_days": s.queue.retention_days,
        "queue.concurrency": s.queue.concurrency,
        "queue.per_host": s.queue.per_host,
        "queue.delivery_timeout_s": s.queue.delivery_timeout_s,
        "queue.metered_max_bytes": s.queue.metered_max_bytes,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(key, f"must be greater than 0, got {value}")
    if s.queue.backoff_max_s < s.queue.backoff_base_s:
        raise ConfigError("queue.backoff_max_s", "must not be less than queue.backoff_base_s")
    if s.model.idle_unload_s < 0:
        raise ConfigError("model.idle_unload_s", "must be 0 (never) or more")
    _check_model_ranges(s.model)
    if not 100 <= s.connectivity.expect_status <= 599:
        raise ConfigError("connectivity.expect_status", "must be an HTTP status code")
    if not s.connectivity.probe_url.startswith(("http://", "https://")):
        raise ConfigError("connectivity.probe_url", "must be an http:// or https:// URL")
    _check_fleet(s.fleet)
    _check_hosts("tools.allow_hosts", s.tools.allow_hosts)
    _check_hosts("tools.allow_writes", s.tools.allow_writes)
    for name in s.agent.env_secrets:
        if not SECRET_NAME.fullmatch(name):
            raise ConfigError("agent.env_secrets", f"{name[:130]!r} is not an environment variable's name")
    for key, address, example in (
        ("agent.metrics_listen", s.agent.metrics_listen, "127.0.0.1:9464"),
        ("agent.listen", s.agent.listen, "127.0.0.1:11435"),
    ):
        host, colon, port = address.rpartition(":")
        if address and not (colon and host and port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(key, f'must be "host:port", e.g. "{example}" ("" = off)')


def _check_fleet(f: FleetSettings) -> None:
    if f.url and not f.url.startswith(FLEET_SCHEMES):
        raise ConfigError("fleet.url", 'must be a NATS URL, e.g. "nats://hub.example:4222" ("" = off)')
    if f.host and not FLEET_HOST.fullmatch(f.host):
        raise ConfigError("fleet.host", "must be 1 to 64 letters, digits, _ or - (it is a subject token)")
    for key in f.work_keys:
        try:
            VerifierKey.parse(key)
        except BadCheckpoint as exc:
            raise ConfigError("fleet.work_keys", f"{key[:80]!r}: {exc.message}") from None
    for name in f.work_secrets:
        if not SECRET_NAME.fullmatch(name):
            raise ConfigError("fleet.work_secrets", f"{name[:80]!r} is not a secret name")
    _check_hosts("fleet.work_hosts", f.work_hosts)


def _check_hosts(key: str, hosts: tuple[str, ...]) -> None:
    for entry in hosts:
        match = HOST_ENTRY.fullmatch(entry)
        if match is None or (match[2] is not None and not 0 < int(match[2]) < 65536):
            raise ConfigError(
                key, f'{entry!r} is not "host" or "host:port" (e.g. "api.example.org", "127.0.0.1:8080")'
            )
