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


class Router:
    def __init__(self, local: LocalRoute, default_route: str) -> None:
        self.local = local
        self.default_route = default_route

    def resolve(self, route: str | None, model: str | None) -> tuple[RouteInfo, ModelBackend]:
        name = route or self.default_route
        if name == "local":
            return self.local.backend(model)
        if name in ROUTE_NAMES:
            raise RouteRefused(name, f"the {name} route is not available in this version of Waystation")
        raise RouteRefused(name, f"unknown route; known routes: {', '.join(ROUTE_NAMES)}")

    def statuses(self) -> list[dict[str, Any]]:
        return [self.local.status()]
