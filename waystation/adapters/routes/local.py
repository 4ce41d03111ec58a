"""The `local` route: a model on this host (llama.cpp, or MLX), no credential, no cost.

Backends are kept per model path, each loading lazily on its first turn and unloading after
`idle_unload_s` unused (or a request's `keep_alive`), so naming another model for one turn does
not evict the default. Several stay loaded within `[model] max_loaded` and `memory_budget_mb`;
past those the least recently used idle one unloads first (adapters/models/residency.py).
A model is named by a name from `waystation models ls` (see adapters/models/store.py) or a path.
"""

from __future__ import annotations

from pathlib import Path

from waystation import contract
from waystation.adapters.models import choose_backend, cpu_threads, open_backend
from waystation.adapters.models.base import ModelBackend
from waystation.adapters.models.embedded import default_model_path
from waystation.adapters.models.residency import Residency
from waystation.adapters.models.saved_state import directory_bytes
from waystation.adapters.models.store import EMBEDDED, ModelStore, looks_like_name
from waystation.adapters.models.threaded import ThreadedBackend
from waystation.config import ModelSettings
from waystation.errors import ModelError, RouteRefused, UnknownModel
from waystation.receipts.chain import RouteInfo, route_object
from waystation.timeutil import iso


class LocalRoute:
    name = "local"

    def __init__(
        self,
        settings: ModelSettings,
        backends: dict[str, ModelBackend] | None = None,
        models: ModelStore | None = None,
        states_dir: Path | None = None,
    ) -> None:
        self._settings = settings
        self._states_dir = states_dir  # parked turns' model state (resume_state.py); None: not kept
        self._backends: dict[str, ModelBackend] = backends or {}
        self._models = models
        self.residency = Residency.for_settings(settings)

    def model_path(self, model: str | None = None) -> Path:
        """The file (or MLX directory) a turn's `model` means; `[model] path` may be a name too."""
        chosen = model or self._settings.path
        if not chosen or chosen.lower() == EMBEDDED:
            return default_model_path()
        if not looks_like_name(chosen):
            return Path(chosen).expanduser()
        found = self._models.find(chosen) if self._models is not None else None
        if found is not None:
            return found.path
        if Path(chosen).exists():  # a file or directory of that name where we run, as before names
            return Path(chosen)
        raise UnknownModel(chosen)

    def model_name(self, path: Path) -> str:
        """What `models ls` calls the model at `path`: its name, `embedded`, or the path itself."""
        if self._models is not None and path.parent == self._models.root:
            return path.name.removesuffix(".gguf")
        try:
            if path == default_model_path():
                return EMBEDDED
        except ModelError:
            pass
        return str(path)

    def backend(self, model: str | None = None) -> tuple[RouteInfo, ModelBackend]:
        path = self.model_path(model)
        key = str(path)
        if key not in self._backends:
            if not path.exists():
                raise ModelError(path, "no such file or directory")
            opened = open_backend(path, self._settings, self.residency, self._states_dir)
            if isinstance(opened, ThreadedBackend):
                self.residency.add(opened)
            self._backends[key] = opened
        backend = self._backends[key]
        return self.info(path, backend.name), backend

    def info(self, path: Path, provider: str) -> RouteInfo:
        named = self._models is not None and path.parent == self._models.root
        model = self.model_name(path) if named else path.name
        return RouteInfo(name="local", provider=provider, auth_lane="none", cost_lane="local", model=model)

    def needs_internet(self) -> bool:
        return False

    def refused(self, reason: str) -> RouteRefused:
        return RouteRefused(
            "local", reason, provider=self._settings.backend, auth_lane="none", cost_lane="local"
        )

    async def availability(self) -> tuple[bool, str | None]:
        status = await self.status()
        return bool(status["available"]), status["reason"]

    async def status(self) -> contract.Route:
        """The contract's route object, with the reason when it cannot run."""
        try:
            path = self.model_path()
            provider = choose_backend(path, self._settings.backend)
            available, reason = path.exists(), None if path.exists() else f"model {path} not found"
            model: str | None = path.name
        except (ModelError, UnknownModel) as exc:
            provider, available, reason, model = self._settings.backend, False, exc.message, None
        return route_object(RouteInfo("local", provider, "none", "local", model), available, reason)

    def model_status(self) -> contract.ModelStatus:
        """For `GET /v1/status`: the default model, whether it is in memory now, and the CPU
        threads llama.cpp runs it with (null for MLX)."""
        try:
            path = str(self.model_path())
        except (ModelError, UnknownModel):
            path = self._settings.path
        backend = self._backends.get(path)
        return {
            "backend": backend.name if backend else self._settings.backend,
            "path": path,
            "loaded": bool(backend and backend.loaded),
            "threads": cpu_threads(backend, Path(path), self._settings),
        }

    def loaded(self) -> list[contract.LoadedModel]:
        """For `models ps`: each model in memory now, its size on disk, the memory it takes (the
        estimate the budget counts: weights and KV cache), and when it unloads: `until` is that
        time, "busy" (the timer starts anew when it is done) or "forever"; the sequences it
        generates now, of the `parallel` it may (0: one at a time)."""
        rows: list[contract.LoadedModel] = []
        for key, backend in self._backends.items():
            if not backend.loaded:
                continue
            path = Path(key)
            busy = bool(getattr(backend, "busy", False))
            unloads_at = iso(getattr(backend, "unloads_at", None))
            rows.append(
                {
                    "name": self.model_name(path),
                    "path": key,
                    "backend": backend.name,
                    "size": _size(path),
                    "memory": self.residency.size(key),
                    "loaded_at": iso(getattr(backend, "loaded_at", None)),
                    "unloads_at": unloads_at,
                    "until": "busy" if busy else unloads_at or "forever",
                    "busy": busy,
                    "sequences": int(getattr(backend, "in_use", 0)),
                    "waiting": int(getattr(backend, "waiting", 0)),
                    "parallel": int(getattr(backend, "parallel", 0)),
                    "saved_state": getattr(backend, "saved_state", None),
                }
            )
        return rows

    def drafts(self) -> tuple[int, int]:
        """For /metrics: n-gram draft tokens (drafted, accepted) of the models loaded now."""
        return self._summed("drafts")

    def saved_states(self) -> tuple[int, int, int]:
        """For /metrics: bytes of parked turns' model state on disk (every model's), and the
        prefixes saved and restored by the models loaded now."""
        size = directory_bytes(self._states_dir) if self._states_dir is not None else 0
        return size, *self._summed("state_counts")

    def _summed(self, counter: str) -> tuple[int, int]:
        """A pair of counts (a llama.cpp backend's `drafts`, `state_counts`) over the loaded models."""
        counts = [getattr(b, counter, (0, 0)) for b in self._backends.values()]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)

    async def forget(self, path: Path) -> None:
        """Unload the model at `path` (after a generation under way) and drop it: it is being removed."""
        backend = self._backends.pop(str(path), None)
        if backend is not None:
            if isinstance(backend, ThreadedBackend):
                self.residency.discard(backend)
            await backend.unload()
            await backend.close()

    async def close(self) -> None:
        for backend in self._backends.values():
            await backend.close()
        self._backends.clear()


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return path.stat().st_size
    except OSError:
        return 0
