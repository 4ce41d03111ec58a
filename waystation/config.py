"""Settings from `config.toml` and `WAYSTATION_<SECTION>__<KEY>` overrides, and the state paths.

Every key is optional and typed by its dataclass field. A bad file, an unknown key or a value of
the wrong type raises ConfigError naming the key, so the agent never starts half-configured.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import sys
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import platformdirs

from waystation.errors import BadCheckpoint, ConfigError
from waystation.receipts.checkpoints import VerifierKey

ENV_PREFIX = "WAYSTATION_"
APP_NAME = "waystation"
# What a secret may be named (`[secrets] NAME`, a task's `{"secret": "NAME"}`): an environment
# variable's or a file's name, never a path.
SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class AgentSettings:
    default_route: str = "local"
    # auto: a turn that parked tool calls resumes by itself once they have all settled.
    resume: Literal["auto", "off"] = "auto"
    # Members of this group may use the socket too (0660/0750 of the group); "" = only our uid.
    socket_group: str = ""
    # "host:port" to serve GET /metrics (and nothing else) over TCP for Prometheus; "" = off.
    metrics_listen: str = ""
    # Environment variables a task's header `{"secret": NAME}` may read (as sshd's AcceptEnv
    # names those a client may set): anyone on the socket may post such a task, so no other
    # variable of the agent's (HOME, HF_TOKEN, a route's key) is ever one.
    env_secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSettings:
    path: str = ""
    backend: Literal["auto", "llamacpp", "mlx"] = "auto"
    idle_unload_s: float = 300.0
    # llama.cpp's own settings, under the contract's names (MLX takes none of them: it sizes its
    # cache as it goes, runs on the GPU, and reads the context length from the model's config).
    threads: int = 0  # 0 = one per physical core, as llama.cpp (and llama-server) choose
    gpu_layers: int = 0  # layers offloaded to the GPU; -1 = all that the build's GPU can take
    context: int = 4096  # tokens of prompt and reply together (the KV cache is sized for it)
    batch: int = 512  # prompt tokens evaluated per step
    # auto: on where every layer runs on the CPU (llama.cpp's auto resolves to on there), off
    # with GPU layers: llama-cpp-python can pass only on or off, not llama.cpp's per-device check.
    flash_attention: Literal["auto", "on", "off"] = "auto"
    mmap: bool = True  # map the file instead of reading it into memory (pages load as used)
    mlock: bool = False  # pin the model in RAM so it is never swapped out
    # Several models may stay loaded: before one loads, the least recently used idle ones unload
    # until it fits both limits (a model that is generating is waited for, never cut off).
    max_loaded: int = 0  # models loaded at once; 0 = 3, Ollama's OLLAMA_MAX_LOADED_MODELS on a CPU
    memory_budget_mb: int = 0  # MB (10^6 bytes) for their weights and KV caches; 0 = 3/4 of the RAM
    # MB a pull leaves free on the models' file system (for the database); 0 = the larger of 256 MiB
    # and 1 % of the file system (the 1 % at most 4 GiB): adapters/models/room.py.
    keep_free_mb: int = 0


@dataclass(frozen=True)
class ConnectivitySettings:
    mode: Literal["auto", "online", "offline"] = "auto"
    probe_url: str = "http://connectivitycheck.gstatic.com/generate_204"
    expect_status: int = 204
    probe_timeout_s: float = 3.0
    # How often to probe while online; offline probes back off from 1 s up to this.
    online_probe_interval_s: float = 300.0
    offline_probe_max_s: float = 60.0
    # Metered connection (hold back large or unsized work): auto = NetworkManager's Metered property.
    metered: Literal["auto", "yes", "no"] = "auto"


@dataclass(frozen=True)
class ToolsSettings:
    # Hosts a model's network call may reach though the conversation never named them (a
    # call to any other unnamed URL is refused, never parked). "host" or "host:port".
    allow_hosts: tuple[str, ...] = ()
    # Hosts a model may write (POST, PUT, PATCH) JSON of its own to; to any other host a model
    # writes only a JSON object the user's messages contain. "host" or "host:port".
    allow_writes: tuple[str, ...] = ()


@dataclass(frozen=True)
class QueueSettings:
    max_attempts: int = 8
    backoff_base_s: float = 2.0
    backoff_max_s: float = 3600.0
    retention_days: float = 7.0
    concurrency: int = 4
    # At most this many deliveries in flight to one destination host.
    per_host: int = 2
    # Delivery timeout; a lease lasts this long plus a margin before it counts as abandoned.
    delivery_timeout_s: float = 30.0
    # On a metered connection, tasks whose arguments are longer than this (and web_fetch, whose
    # download size is unknown) wait for an unmetered one or an explicit flush.
    metered_max_bytes: int = 65536


@dataclass(frozen=True)
class FleetSettings:
    """`[fleet]`: the NATS JetStream hub this host reports to and takes work from ("" url = off)."""

    url: str = ""  # nats://host:4222 (tls://, ws://, wss:// too); "" = no fleet
    host: str = ""  # this host's name in the subjects and the status bucket; "" = the hostname
    # A NATS credentials file (JWT and seed). Only its path is ever shown: the content is a secret.
    creds: str = ""
    # Work from the hub is taken only when signed by one of these (verifier keys, NAME+KEYID+BASE64,
    # as `waystation fleet keygen` prints them): the hub itself is not trusted to say who sent it.
    work_keys: tuple[str, ...] = ()
    # The secret names work may reference in its headers (none by default).
    work_secrets: tuple[str, ...] = ()
    # The destination hosts work may reach; () = any public host. Loopback, link-local and private
    # addresses only when listed.
    work_hosts: tuple[str, ...] = ()


# An entry of [tools] allow_hosts or allow_writes: a host name or address, or host:port (an IPv6
# address in brackets when it has a port). A URL or a path there would never match a call's host.
HOST_ENTRY = re.compile(
    r"(?:(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?"  # name or [IPv6], then :port
    r"|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]+)"  # an IPv6 address without a port
)

FLEET_SCHEMES = ("nats://", "tls://", "ws://", "wss://")
# A host name is one subject token: no dots (they separate tokens), wildcards or spaces.
FLEET_HOST = re.compile(r"[A-Za-z0-9_-]{1,64}")


def fleet_host(fleet: FleetSettings) -> str:
    """The host's name in the fleet: `[fleet] host`, else the hostname's first label, made a
    subject token (a dotted name would add tokens to every subject)."""
    if fleet.host:
        return fleet.host
    label = socket.gethostname().split(".")[0]
    return re.sub(r"[^A-Za-z0-9_-]", "-", label)[:64] or "localhost"


def check_fleet_creds(fleet: FleetSettings) -> None:
    """Refuse, naming `fleet.creds`, a credentials file that cannot be read or is not one; its
    content is never shown (it holds the user's seed)."""
    if not fleet.creds:
        return
    path = Path(fleet.creds).expanduser()
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise ConfigError("fleet.creds", f"cannot read {path}: {exc.strerror or exc}") from None
    if "BEGIN NATS USER JWT" not in text or "BEGIN USER NKEY SEED" not in text:
        raise ConfigError("fleet.creds", f"{path} is not a NATS credentials file (no user JWT and seed)")


ROUTE_NAMES = (
    "local",
    "openai",
    "anthropic",
    "deepseek",
    "xai",
    "vertex",
    "compatible",
    "ollama",
    "codex-seat",
    "claude-seat",
)
OFF_BY_DEFAULT = frozenset({"claude-seat"})  # a subscription seat runs only where policy enables it


@dataclass(frozen=True)
class RouteSettings:
    """`[routes.NAME]`: every key optional; keys are better kept in the environment."""

    enabled: bool = True
    model: str = ""
    api_key: str = ""
    base_url: str = ""
    project: str = ""  # vertex
    region: str = ""  # vertex


@dataclass(frozen=True)
class Settings:
    agent: AgentSettings = field(default_factory=AgentSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    connectivity: ConnectivitySettings = field(default_factory=ConnectivitySettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    tools: ToolsSettings = field(default_factory=ToolsSettings)
    fleet: FleetSettings = field(default_factory=FleetSettings)
    routes: typing.Mapping[str, RouteSettings] = field(default_factory=dict)
    # `[secrets] NAME = "value"`: what a task's header `{"secret": "NAME"}` may resolve to.
    secrets: typing.Mapping[str, str] = field(default_factory=dict)

    def route(self, name: str) -> RouteSettings:
        """A route's settings, with its defaults where the config says nothing."""
        if name in self.routes:
            return self.routes[name]
        return RouteSettings(enabled=name not in OFF_BY_DEFAULT)


@dataclass(frozen=True)
class Paths:
    config_file: Path
    database: Path
    socket: Path
    logs: Path
    # Named models (`waystation models ...`); unset: beside the database, in the data directory,
    # since model files are data worth keeping, and far larger than anything in the state dir.
    models: Path = Path()
    # The receipts' signing key and last checkpoint; unset: beside the database, like models/.
    state: Path = Path()

    def __post_init__(self) -> None:
        if self.models == Path():
            object.__setattr__(self, "models", self.database.parent / "models")
        if self.state == Path():
            object.__setattr__(self, "state", self.database.parent)

    @classmethod
    def resolve(cls, env: typing.Mapping[str, str] | None = None) -> Paths:
        env = os.environ if env is None else env
        home = env.get("WAYSTATION_HOME")
        if home:
            root = Path(home).expanduser()
            paths = cls(root / "config.toml", root / "waystation.db", root / "waystation.sock", root / "logs")
        else:
            state = Path(platformdirs.user_state_dir(APP_NAME))
            runtime = env.get("XDG_RUNTIME_DIR")
            if sys.platform.startswith("linux") and runtime:
                socket_dir = Path(runtime) / APP_NAME
            else:
                socket_dir = state
            paths = cls(
                Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml",
                Path(platformdirs.user_data_dir(APP_NAME)) / "waystation.db",
                socket_dir / "waystation.sock",
                state / "logs",
            )
        if env.get("WAYSTATION_SOCKET"):
            paths = dataclasses.replace(paths, socket=Path(env["WAYSTATION_SOCKET"]).expanduser())
        return paths


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
    if not 1 <= m.batch <= MAX_CONTEXT:
        raise ConfigError("model.batch", f"must be 1 to {MAX_CONTEXT} tokens, got {m.batch}")
    if not 0 <= m.max_loaded <= MAX_LOADED:
        raise ConfigError("model.max_loaded", f"must be 0 (3) to {MAX_LOADED} models, got {m.max_loaded}")
    if m.memory_budget_mb < 0:
        raise ConfigError(
            "model.memory_budget_mb", f"must be 0 (3/4 of the RAM) or more, got {m.memory_budget_mb}"
        )
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
    host, colon, port = s.agent.metrics_listen.rpartition(":")
    if s.agent.metrics_listen and not (colon and host and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError("agent.metrics_listen", 'must be "host:port", e.g. "127.0.0.1:9464" ("" = off)')


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
