"""Routes: where a turn runs. A turn runs on the route it names, or it is refused with a reason.

There is no fallback: a route that cannot run refuses the turn (RouteRefused, exit code 4, a
`refused` receipt naming the route's own lanes), even when another route could have answered.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol

from waystation import contract
from waystation.adapters.models.base import ModelBackend
from waystation.adapters.routes.local import LocalRoute
from waystation.adapters.routes.providers import provider_routes
from waystation.adapters.routes.seats import ClaudeSeat, CodexSeat
from waystation.config import ROUTE_NAMES, Settings
from waystation.errors import RouteOffline, RouteRefused
from waystation.ports import Connectivity
from waystation.receipts.chain import RouteInfo

OFFLINE = RouteOffline.OFFLINE


class Route(Protocol):
    name: str

    async def availability(self) -> tuple[bool, str | None]: ...

    async def status(self) -> contract.Route: ...

    def backend(self, model: str | None = None) -> tuple[RouteInfo, ModelBackend]: ...

    def refused(self, reason: str) -> RouteRefused: ...

    def needs_internet(self) -> bool: ...

    async def close(self) -> None: ...


class Router:
    def __init__(
        self,
        local: LocalRoute,
        default_route: str,
        *,
        settings: Settings | None = None,
        connectivity: Connectivity | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        settings = settings or Settings()
        env = os.environ if env is None else env
        self.local = local
        self.default_route = default_route
        self._connectivity = connectivity
        self.routes: dict[str, Route] = {
            "local": local,
            **provider_routes(settings, env),
            "codex-seat": CodexSeat(model=settings.route("codex-seat").model, env=env),
            "claude-seat": ClaudeSeat(
                enabled=settings.route("claude-seat").enabled,
                model=settings.route("claude-seat").model,
                env=env,
            ),
        }
        assert tuple(self.routes) == ROUTE_NAMES
        # The model each route's provider last said answered: shown beside the model asked for.
        self.last_answered: dict[str, str] = {}

    async def availability(self, name: str) -> tuple[bool, str | None]:
        """The route's own answer first (what it lacks is the lasting reason), then the network."""
        available, reason = await self.routes[name].availability()
        if available and self._offline(self.routes[name]):
            return False, OFFLINE
        return available, reason

    def _offline(self, route: Route) -> bool:
        return (
            route.needs_internet() and self._connectivity is not None and self._connectivity.state != "online"
        )

    async def resolve(self, route: str | None, model: str | None) -> tuple[RouteInfo, ModelBackend]:
        """The named route's backend, or RouteRefused saying why it cannot run now."""
        name = route or self.default_route
        if name not in self.routes:
            raise RouteRefused(name, f"unknown route; known routes: {', '.join(ROUTE_NAMES)}")
        chosen = self.routes[name]
        available, reason = await chosen.availability()
        if not available:
            raise chosen.refused(reason or "unavailable")
        if self._offline(chosen):
            raise RouteOffline.of(chosen.refused(OFFLINE))
        return chosen.backend(model)

    def answered(self, turn: Mapping[str, Any]) -> None:
        """A listener for finished turns: remember the model the route's provider said answered."""
        if turn.get("model_answered"):
            self.last_answered[str(turn["route"])] = str(turn["model_answered"])

    async def statuses(self) -> list[contract.Route]:
        """Every route, available or not, with the reason when not: the same reason a turn on it
        would be refused with (what the route lacks first, then the network)."""
        answers = []
        for route in self.routes.values():
            status = await route.status()
            if status["available"] and self._offline(route):
                status["available"], status["reason"] = False, OFFLINE
            status["model_answered"] = self.last_answered.get(route.name)
            answers.append(status)
        return answers

    async def close(self) -> None:
        for route in self.routes.values():
            await route.close()
