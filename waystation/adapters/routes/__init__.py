"""Routes: where a turn runs. A turn runs on the route it names, or it is refused with a reason.

There is no fallback: a route that cannot run refuses the turn (RouteRefused, exit code 4, a
`refused` receipt), even when another route could have answered.
"""

from __future__ import annotations

from typing import Any

from waystation.adapters.models.base import ModelBackend
from waystation.adapters.routes.local import LocalRoute
from waystation.errors import RouteRefused
from waystation.receipts import RouteInfo

# name -> (provider, auth_lane, cost_lane) for the routes this version lists but cannot run yet.
PROVIDER_ROUTES: dict[str, tuple[str, str, str]] = {
    "openai": ("openai", "api_key", "byok"),
    "anthropic": ("anthropic", "api_key", "byok"),
    "deepseek": ("deepseek", "api_key", "byok"),
    "xai": ("xai", "api_key", "byok"),
    "vertex": ("google-vertex", "oauth", "byok"),
    "compatible": ("openai-compatible", "api_key", "byok"),
    "ollama": ("ollama", "none", "local"),
    "codex-seat": ("openai", "seat", "provider_subscription"),
    "claude-seat": ("anthropic", "seat", "provider_subscription"),
}
ROUTE_NAMES = ("local", *PROVIDER_ROUTES)
NOT_YET = "not available in this version of Waystation"


class Router:
    def __init__(self, local: LocalRoute, default_route: str) -> None:
        self.local = local
        self.default_route = default_route

    def resolve(self, route: str | None, model: str | None) -> tuple[RouteInfo, ModelBackend]:
        name = route or self.default_route
        if name == "local":
            return self.local.backend(model)
        if name in PROVIDER_ROUTES:
            provider, auth_lane, cost_lane = PROVIDER_ROUTES[name]
            raise RouteRefused(
                name,
                f"the {name} route is {NOT_YET}",
                provider=provider,
                auth_lane=auth_lane,
                cost_lane=cost_lane,
            )
        raise RouteRefused(name, f"unknown route; known routes: {', '.join(ROUTE_NAMES)}")

    def statuses(self) -> list[dict[str, Any]]:
        """Every route, available or not, with the reason when not."""
        return [self.local.status()] + [
            {
                "name": name,
                "provider": provider,
                "auth_lane": auth_lane,
                "cost_lane": cost_lane,
                "model": None,
                "available": False,
                "reason": NOT_YET,
            }
            for name, (provider, auth_lane, cost_lane) in PROVIDER_ROUTES.items()
        ]
