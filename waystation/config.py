"""The settings' shape (a frozen dataclass per `config.toml` section) and the state paths.

Every key is optional and typed by its dataclass field; config_load.py reads the file and the
`WAYSTATION_<SECTION>__<KEY>` overrides into these and checks every key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import platformdirs

from waystation.contract import ConnectivityMode
from waystation.errors import ConfigError

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
    # "host:port" for other tools (OPENAI_BASE_URL): the model API and /mcp, each request with the
    # bearer token in the state directory's api.token; "" = off.
    listen: str = ""
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
    # Sequences generated at once (continuous batching: one decode step for all; llama.cpp sizes
    # a KV cache of `context` tokens for each, MLX batches through mlx-lm's BatchGenerator);
    # 0 = one at a time.
    parallel: int = 4
    # auto: a greedy sequence drafts its next tokens from its own earlier ones (a quote of a
    # page, a summary of tool results) and keeps those the model picks; a sequence whose drafts
    # are mostly wrong stops drafting. off: never. Needs `parallel` > 0.
    speculative: Literal["auto", "off"] = "auto"
    # MB (10^6 bytes) of disk for parked turns' model state (the KV cache of what a resumed
    # answer starts with, in the state directory's model-state/; least recently used dropped
    # first); 0 = off. Needs `parallel` > 0.
    saved_state_mb: int = 1024
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
    mode: ConnectivityMode = "auto"
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
class McpServerSettings:
    """`[mcp.servers.NAME]`: a stdio server (`command`, `args`, `env`: local, called at once) or a
    Streamable HTTP one (`url`, `headers`: remote, a network tool parked while offline).
    config_mcp.py checks that exactly one of `command` and `url` is set."""

    command: str = ""
    args: tuple[str, ...] = ()
    env: typing.Mapping[str, str] = field(default_factory=dict)
    url: str = ""
    # A value is a string or {"secret": NAME}, resolved when a call is delivered.
    headers: typing.Mapping[str, str | typing.Mapping[str, str]] = field(default_factory=dict)
    enabled: bool = True

    @property
    def remote(self) -> bool:
        return bool(self.url)


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
    # `[mcp.servers.NAME]`: the MCP servers whose tools models are offered as NAME__TOOL.
    mcp_servers: typing.Mapping[str, McpServerSettings] = field(default_factory=dict)

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

    @property
    def model_state(self) -> Path:
        """Parked turns' model state ([model] saved_state_mb): a cache, beside models/, not in it."""
        return self.state / "model-state"

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
