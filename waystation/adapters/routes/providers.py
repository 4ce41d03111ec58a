"""The provider routes that speak HTTP: BYOK keys (openai, anthropic, deepseek, xai, compatible),
Google Vertex (application-default credentials) and Ollama (`OLLAMA_HOST`).

Each route says whether it can run now and, when not, why, in words a user can act on. Keys are
read from the providers' usual environment variables or `[routes.NAME] api_key`, only to be
handed to the backend that sends them; they appear in no reason, receipt or log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from waystation import contract
from waystation.adapters.models.base import ModelBackend
from waystation.adapters.routes.anthropic import AnthropicBackend
from waystation.adapters.routes.ollama import OllamaBackend, ollama_base_url
from waystation.adapters.routes.openai_compat import BASE_URLS, OpenAICompatBackend
from waystation.adapters.routes.vertex import GoogleAdc, VertexBackend
from waystation.config import Settings
from waystation.contract import AuthLane, CostLane
from waystation.errors import RouteRefused
from waystation.receipts.chain import RouteInfo, route_object
from waystation.secrets import KEY_VARIABLES, api_key

SUBSCRIPTION_TOKEN = "CLAUDE_CODE_OAUTH_TOKEN"
DEFAULT_MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-sonnet-4-5",
    "deepseek": "deepseek-chat",
    "xai": "grok-4",
    "vertex": "gemini-2.5-flash",
    "ollama": "llama3.2",
}


REACHABLE_FOR_S = 5.0
CONNECT_TIMEOUT_S = 0.5


@dataclass
class ProviderRoute:
    name: str
    provider: str
    auth_lane: AuthLane
    cost_lane: CostLane
    settings: Settings
    env: Mapping[str, str]
    make: Callable[[ProviderRoute, str], ModelBackend]
    _reached_at: float = field(default=-math.inf, init=False)  # Ollama's reachability, checked then
    _unreachable: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._backends: dict[str, ModelBackend] = {}

    @property
    def model(self) -> str:
        return self.settings.route(self.name).model or DEFAULT_MODELS.get(self.name, "")

    @property
    def base_url(self) -> str:
        configured = self.settings.route(self.name).base_url
        if self.name == "ollama":
            return ollama_base_url(configured or self.env.get("OLLAMA_HOST", ""))
        return configured or BASE_URLS.get(self.name, "")

    @property
    def key(self) -> str | None:
        return api_key(self.name, self.settings, self.env)

    def needs_internet(self) -> bool:
        """Cloud routes do; a compatible server or Ollama on this host or the LAN does not."""
        if self.name not in ("compatible", "ollama"):
            return True
        host = urlsplit(self.base_url).hostname or ""
        if host == "localhost":
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return True
        return not (address.is_loopback or address.is_private or address.is_link_local)

    async def availability(self) -> tuple[bool, str | None]:
        if not self.settings.route(self.name).enabled:
            return False, f"{self.name} is disabled by policy ([routes.{self.name}] enabled = false)"
        reason = self._missing()
        if reason is None and self.name == "ollama":
            reason = await self._ollama_unreachable()
        return reason is None, reason

    async def _ollama_unreachable(self) -> str | None:
        """Ollama is a server on this host or the LAN: whether anything listens there is known in
        a moment, and a turn refused now says more than a connection error later. Remembered for
        a few seconds, so `status` and `routes` stay fast."""
        now = time.monotonic()
        if now - self._reached_at > REACHABLE_FOR_S:
            parts = urlsplit(self.base_url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    _, writer = await asyncio.open_connection(parts.hostname, port)
                writer.close()
                self._unreachable = None
            except (OSError, TimeoutError):
                self._unreachable = (
                    f"is Ollama running at {self.base_url}? nothing answers there "
                    "(start it with `ollama serve`, or set OLLAMA_HOST)"
                )
            self._reached_at = now
        return self._unreachable

    def _missing(self) -> str | None:
        """What the route lacks to run, in words a user can act on; None when it lacks nothing."""
        if self.name in KEY_VARIABLES and self.name != "compatible" and not self.key:
            variable = KEY_VARIABLES[self.name]
            if self.name == "anthropic" and self.env.get(SUBSCRIPTION_TOKEN):
                return (
                    f"{SUBSCRIPTION_TOKEN} is an Anthropic subscription token, for interactive use only; "
                    "an unattended agent needs an API key: set ANTHROPIC_API_KEY"
                )
            return f"{variable} is not set"
        if self.name == "compatible" and not self.base_url:
            return "no server configured: set [routes.compatible] base_url (the server's /v1 URL)"
        if self.name == "compatible" and not self.model:
            return "no model configured: set [routes.compatible] model"
        if self.name == "vertex":
            return _vertex_missing(self.settings, self.env)
        return None

    async def status(self) -> contract.Route:
        return route_object(self.info(), *await self.availability())

    def info(self, model: str | None = None) -> RouteInfo:
        return RouteInfo(
            self.name, self.provider, self.auth_lane, self.cost_lane, model or self.model or None
        )

    def refused(self, reason: str) -> RouteRefused:
        return RouteRefused(
            self.name, reason, provider=self.provider, auth_lane=self.auth_lane, cost_lane=self.cost_lane
        )

    def backend(self, model: str | None = None) -> tuple[RouteInfo, ModelBackend]:
        chosen = model or self.model
        if chosen not in self._backends:
            self._backends[chosen] = self.make(self, chosen)
        return self.info(chosen), self._backends[chosen]

    async def close(self) -> None:
        for backend in self._backends.values():
            await backend.close()
        self._backends.clear()


def _vertex_missing(settings: Settings, env: Mapping[str, str]) -> str | None:
    if not _vertex_project(settings, env):
        return "no Google Cloud project: set [routes.vertex] project or GOOGLE_CLOUD_PROJECT"
    # Whether credentials exist, by their file's presence only: never opened here.
    explicit = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    default = Path(env.get("HOME", "~")).expanduser() / ".config/gcloud/application_default_credentials.json"
    if not (explicit and Path(explicit).exists()) and not default.exists():
        return (
            "no Google application-default credentials: run `gcloud auth application-default login` "
            "or set GOOGLE_APPLICATION_CREDENTIALS"
        )
    return None


def _vertex_project(settings: Settings, env: Mapping[str, str]) -> str:
    return settings.route("vertex").project or env.get("GOOGLE_CLOUD_PROJECT", "")


def provider_routes(settings: Settings, env: Mapping[str, str] | None = None) -> dict[str, ProviderRoute]:
    env = os.environ if env is None else env

    def openai_like(route: ProviderRoute, model: str) -> ModelBackend:
        return OpenAICompatBackend(route.name, route.base_url or None, route.key or "", model)

    def anthropic(route: ProviderRoute, model: str) -> ModelBackend:
        base = route.base_url or "https://api.anthropic.com"
        return AnthropicBackend(route.name, base, route.key or "", model)

    def ollama(route: ProviderRoute, model: str) -> ModelBackend:
        return OllamaBackend(route.base_url, model)

    def vertex(route: ProviderRoute, model: str) -> ModelBackend:
        region = settings.route("vertex").region or env.get("GOOGLE_CLOUD_REGION", "us-east5")
        base = settings.route("vertex").base_url or None
        return VertexBackend(_vertex_project(settings, env), region, model, GoogleAdc(), base_url=base)

    table: list[tuple[str, str, AuthLane, CostLane, Callable[[ProviderRoute, str], ModelBackend]]] = [
        ("openai", "openai", "api_key", "byok", openai_like),
        ("anthropic", "anthropic", "api_key", "byok", anthropic),
        ("deepseek", "deepseek", "api_key", "byok", openai_like),
        ("xai", "xai", "api_key", "byok", openai_like),
        ("vertex", "google-vertex", "oauth", "byok", vertex),
        ("compatible", "openai-compatible", "api_key", "byok", openai_like),
        ("ollama", "ollama", "none", "local", ollama),
    ]
    return {
        name: ProviderRoute(name, provider, auth, cost, settings, env, make)
        for name, provider, auth, cost, make in table
    }
