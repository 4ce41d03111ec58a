"""Credentials: where each route's key and each task's secret come from, and keeping every
credential out of the logs.

Keys come from the providers' usual environment variables or from `[routes.NAME] api_key` in the
config file. Waystation holds them in memory to send them to their provider and nowhere else: no
key, token or cookie goes into the database, a receipt, a log line, an error or an answer on the
socket, whole or in part. The log redaction below is the last line of that defence, not the first.

A task's header may name a secret (`{"secret": "NAME"}`) instead of holding it: the task keeps
the name, and the SecretResolver below finds the value when the task is added and again when it
is delivered. Anyone allowed on the socket (with `socket_group`, another uid) may post such a
task, so a name resolves only from what the owner put there for tasks: `[secrets]`, the
service's credentials, and the environment variables `[agent] env_secrets` lists; never from
the rest of the agent's environment (HOME, HF_TOKEN, a route's key in WAYSTATION_ROUTES__...).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import structlog

from waystation.config import ENV_PREFIX, SECRET_NAME, Settings
from waystation.errors import ConfigError
from waystation.redact import REDACTED

log = structlog.get_logger(__name__)

# The environment variable each key route reads, as its provider documents it.
KEY_VARIABLES: dict[str, str] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "xai": "XAI_API_KEY",
    "compatible": "COMPATIBLE_API_KEY",
}
# Credentials Waystation never uses for an unattended turn, but must never leak either.
OTHER_SECRET_VARIABLES = ("CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN", "GOOGLE_API_KEY")
# The agent's own credentials besides those: never a task's secret, even listed in env_secrets.
AGENT_VARIABLES = ("HF_TOKEN", "OLLAMA_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS")
WINDOW = 8  # a run of this many characters of a secret counts as the secret "in part"


def api_key(route: str, settings: Settings, env: Mapping[str, str] | None = None) -> str | None:
    """The route's key: its environment variable first, then `[routes.NAME] api_key`."""
    env = os.environ if env is None else env
    variable = KEY_VARIABLES.get(route)
    return (env.get(variable) if variable else None) or settings.route(route).api_key or None


def known_secrets(settings: Settings, env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    names = [*KEY_VARIABLES.values(), *OTHER_SECRET_VARIABLES]
    values = [env.get(n, "") for n in names] + [r.api_key for r in settings.routes.values()]
    values += settings.secrets.values()
    return sorted({v for v in values if len(v) >= WINDOW})


def warn_if_config_exposed(config_file: Path, settings: Settings) -> None:
    """A config file holding keys should be readable by its owner alone."""
    if not any(r.api_key for r in settings.routes.values()) and not settings.secrets:
        return
    try:
        mode = stat.S_IMODE(config_file.stat().st_mode)
    except OSError:
        return
    if mode & 0o077:
        log.warning(
            "config file holds API keys and is readable by others; run chmod 600 on it",
            config_file=str(config_file),
            mode=f"{mode:o}",
        )


class SecretResolver:
    """Where a task's secret NAME is found, the first place that has it (empty counts as unset):

    1. the file $CREDENTIALS_DIRECTORY/NAME: systemd's LoadCredential=NAME:PATH, made for this
       (readable by the service alone, never in its environment); one trailing newline dropped
    2. the environment variable NAME, when `[agent] env_secrets` lists it (an allow-list, as
       sshd's AcceptEnv: the rest of the environment is the agent's, not the socket's)
    3. `[secrets] NAME` in the config file

    Looked up each time, not once at start: a credential or a variable may change while tasks
    wait. Each value found is handed to `found` (the log redaction), since its name is unknown
    until a task names it.
    """

    def __init__(
        self,
        settings: Settings,
        config_file: Path,
        env: Mapping[str, str] | None = None,
        found: Callable[[str], None] = lambda _: None,
    ) -> None:
        own = [name for name in settings.agent.env_secrets if agents_own(name)]
        if own:  # listed by mistake: refused at start, not at the first task naming it
            raise ConfigError(
                "agent.env_secrets",
                f"{own[0]} is the agent's own credential, never sent elsewhere; give a task its own secret",
            )
        self._settings = settings
        self._config_file = config_file
        self._env = os.environ if env is None else env
        self._env_secrets = frozenset(settings.agent.env_secrets)
        self._found = found

    def resolve(self, name: str) -> str | None:
        if not SECRET_NAME.fullmatch(name):  # never a path: the name becomes a file name below
            return None
        value = self._credential(name) or self._variable(name) or self._settings.secrets.get(name)
        if value:
            self._found(value)
        return value or None

    def unset(self, name: str) -> str:
        """Why NAME resolves nowhere, and where to put it. The same words whether or not the
        agent's environment has such a variable: a caller learns nothing of it."""
        where = (
            f"[secrets] of {self._config_file}, the service's credentials (LoadCredential={name}:...), "
            "or an environment variable of the agent's that [agent] env_secrets lists"
        )
        if agents_own(name):
            own = "is the agent's own credential, never sent elsewhere: give the task its own in"
            return f"secret {name} {own} {where}"
        return f"secret {name} is not set: put it in {where}"

    def _credential(self, name: str) -> str | None:
        directory = self._env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            return None
        try:
            data = (Path(directory) / name).read_bytes()
        except OSError:  # not one of the service's credentials (or unreadable): try the next place
            return None
        # Undecodable bytes stay visible as such: the header check refuses them, naming the secret.
        return data.decode(errors="replace").removesuffix("\n").removesuffix("\r")

    def _variable(self, name: str) -> str | None:
        return self._env.get(name) if name in self._env_secrets else None


def agents_own(name: str) -> bool:
    """Whether an environment variable holds a credential of the agent's own (a route's key, the
    hub token, a config override such as WAYSTATION_ROUTES__OPENAI__API_KEY)."""
    return (
        name in KEY_VARIABLES.values()
        or name in OTHER_SECRET_VARIABLES
        or name in AGENT_VARIABLES
        or name.upper().startswith(ENV_PREFIX)
    )


class Redactor:
    """A structlog processor that blanks any known secret, whole or any WINDOW-long part of it."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._windows: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Blank `secret` too from now on (shorter than WINDOW: too short to tell from other text)."""
        self._windows.update(secret[i : i + WINDOW] for i in range(len(secret) - WINDOW + 1))

    def redact(self, text: str) -> str:
        if len(text) < WINDOW or not self._windows:
            return text
        for i in range(len(text) - WINDOW + 1):
            if text[i : i + WINDOW] in self._windows:
                return REDACTED  # the whole value: what surrounds a secret may frame it
        return text

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in list(event.items()):
            if isinstance(value, str):
                event[key] = self.redact(value)
            elif value is not None and not isinstance(value, int | float | bool):
                event[key] = self.redact(str(value))
        return event
