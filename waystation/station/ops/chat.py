"""OpenAI-compatible chat completions: a turn on the default route, with the client's tools.

The request's `model` is what an OpenAI client was configured with ("gpt-4o", "default"): it
picks a model only where the default route is local and the name is one the local route knows;
otherwise the route's own model runs. Either way the answer names the model that ran.
"""

from __future__ import annotations

from waystation.errors import UnsupportedParameter, WaystationError
from waystation.station import TurnStation
from waystation.station.turns.request import TurnRequest


def check(station: TurnStation, request: TurnRequest) -> None:
    """Refuse what the default route would silently drop: only llama.cpp's grammar constrains."""
    if request.response_format is not None and station.router.default_route != "local":
        route = station.router.default_route
        raise UnsupportedParameter(
            "response_format", f"the default route {route} cannot constrain its answer"
        )


async def model_for(station: TurnStation, requested: str | None) -> tuple[str | None, str]:
    """The model to ask the route for (None: its default) and the name of the model that runs."""
    router = station.router
    model = (
        requested if requested and router.default_route == "local" and _known(station, requested) else None
    )
    try:
        info, _ = await router.resolve(None, model)
    except WaystationError:  # the turn is refused or fails, with its receipt, when it runs
        return model, model or router.default_route
    return model, info.model or info.name


def _known(station: TurnStation, name: str) -> bool:
    try:
        return station.router.local.model_path(name).exists()
    except (WaystationError, OSError, ValueError):  # not a name or a path it can use
        return False
