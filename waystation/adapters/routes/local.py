"""The `local` route: a model on this host (llama.cpp, or MLX), no credential, no cost.

Backends are kept per model path, each loading lazily on its first turn and unloading after
`idle_unload_s` unused, so naming another model for one turn does not evict the default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from waystation.adapters.models import choose_backend, cpu_threads, open_backend
from waystation.adapters.models.base import ModelBackend
from waystation.adapters.models.embedded import default_model_path
from waystation.config import ModelSettings
from waystation.errors import ModelError, RouteRefused
from waystation.receipts import RouteInfo, route_object


class LocalRoute:
    name = "local"

    def __init__(self, settings: ModelSettings, backends: dict[str, ModelBackend] | None = None) -> None:
        self._settings = settings
        self._backends: dict[str, ModelBackend] = backends or {}

    def model_path(self, model: str | None = None) -> Path:
        chosen = model or self._settings.path
        return Path(chosen).expanduser() if chosen else default_model_path()

    def backend(self, model: str | None = None) -> tuple[RouteInfo, ModelBackend]:
        path = self.model_path(model)
        key = str(path)
        if key not in self._backends:
            if not path.exists():
                raise ModelError(path, "no such file or directory")
            self._backends[key] = open_backend(path, self._settings)
        backend = self._backends[key]
        return self.info(path, backend.name), backend

    def info(self, path: Path, provider: str) -> RouteInfo:
        return RouteInfo(
            name="local", provider=provider, auth_lane="none", cost_lane="local", model=path.name
        )

    def needs_internet(self) -> bool:
        return False

    def refused(self, reason: str) -> RouteRefused:
        return RouteRefused(
            "local", reason, provider=self._settings.backend, auth_lane="none", cost_lane="local"
        )

    async def availability(self) -> tuple[bool, str | None]:
        status = await self.status()
        return bool(status["available"]), status["reason"]

    async def status(self) -> dict[str, Any]:
        """The contract's route object, with the reason when it cannot run."""
        try:
            path = self.model_path()
            provider = choose_backend(path, self._settings.backend)
            available, reason = path.exists(), None if path.exists() else f"model {path} not found"
            model: str | None = path.name
        except ModelError as exc:
            provider, available, reason, model = self._settings.backend, False, exc.message, None
        return route_object(RouteInfo("local", provider, "none", "local", model), available, reason)

    def model_status(self) -> dict[str, Any]:
        """For `GET /v1/status`: the default model, whether it is in memory now, and the CPU
        threads llama.cpp runs it with (null for MLX)."""
        try:
            path = str(self.model_path())
        except ModelError:
            path = self._settings.path
        backend = self._backends.get(path)
        return {
            "backend": backend.name if backend else self._settings.backend,
            "path": path,
            "loaded": bool(backend and backend.loaded),
            "threads": cpu_threads(backend, Path(path), self._settings),
        }

    async def close(self) -> None:
        for backend in self._backends.values():
            await backend.close()
        self._backends.clear()
