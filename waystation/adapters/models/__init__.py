"""Local model backends: llama.cpp, MLX, and a scripted test double, behind one Protocol."""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from waystation.adapters.models.base import ModelBackend
from waystation.adapters.models.cpu_cores import physical_cores
from waystation.config import ModelSettings
from waystation.errors import ModelError

if TYPE_CHECKING:
    from waystation.adapters.models.llamacpp import LlamaOptions
    from waystation.adapters.models.threaded import Admission


def choose_backend(path: Path, backend: str) -> str:
    """`auto`: MLX on Apple Silicon and for an MLX model directory; llama.cpp for GGUF elsewhere."""
    if backend != "auto":
        return backend
    return "mlx" if path.is_dir() or on_apple_silicon() else "llamacpp"


def open_backend(
    path: Path, settings: ModelSettings, admission: Admission | None = None, states_dir: Path | None = None
) -> ModelBackend:
    """A backend for `path`, not yet loaded: loading happens on the first turn (once `admission`,
    the route's memory budget, has made room). Parked turns' model state goes to `states_dir`."""
    kind = choose_backend(path, settings.backend)
    if kind == "mlx":
        from waystation.adapters.models.mlx import MlxBackend

        return MlxBackend(
            str(path), idle_unload_s=settings.idle_unload_s, admission=admission, parallel=settings.parallel
        )
    if kind == "llamacpp":
        from waystation.adapters.models.llamacpp import LlamaCppBackend

        return LlamaCppBackend(
            str(path),
            idle_unload_s=settings.idle_unload_s,
            options=llama_options(settings),
            admission=admission,
            states_dir=states_dir,
        )
    raise ModelError(path, f"unknown backend {kind!r}")


def llama_options(settings: ModelSettings) -> LlamaOptions:
    from waystation.adapters.models.llamacpp import LlamaOptions

    return LlamaOptions(
        context=settings.context,
        threads=settings.threads,
        gpu_layers=settings.gpu_layers,
        batch=settings.batch,
        parallel=settings.parallel,
        speculative=settings.speculative,
        saved_state_mb=settings.saved_state_mb,
        flash_attention=settings.flash_attention,
        mmap=settings.mmap,
        mlock=settings.mlock,
    )


def cpu_threads(backend: ModelBackend | None, path: Path, settings: ModelSettings) -> int | None:
    """The CPU threads llama.cpp generates with for this model (its own report once loaded);
    None for MLX, which has no such setting."""
    if choose_backend(path, settings.backend) != "llamacpp":
        return None
    threads = getattr(backend, "threads", None)
    return threads if isinstance(threads, int) else settings.threads or physical_cores()


def on_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"
