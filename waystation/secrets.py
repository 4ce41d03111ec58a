"""Credentials: where each route's key comes from, and keeping every credential out of the logs.

Keys come from the providers' usual environment variables or from `[routes.NAME] api_key` in the
config file. Waystation holds them in memory to send them to their provider and nowhere else: no
key, token or cookie goes into the database, a receipt, a log line, an error or an answer on the
socket, whole or in part. The log redaction below is the last line of that defence, not the first.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import structlog

from waystation.config import Settings
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
    return sorted({v for v in values if len(v) >= WINDOW})


def warn_if_config_exposed(config_file: Path, settings: Settings) -> None:
    """A config file holding keys should be readable by its owner alone."""
    if not any(r.api_key for r in settings.routes.values()):
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


class Redactor:
    """A structlog processor that blanks any known secret, whole or any WINDOW-long part of it."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._windows = {s[i : i + WINDOW] for s in secrets for i in range(len(s) - WINDOW + 1)}

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
