"""Local model backends: llama.cpp, MLX, and a scripted test double, behind one Protocol."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

from waystation.adapters.models.base import ModelBackend
from waystation.config import ModelSettings
from waystation.errors import ModelError


def choose_backend(path: Path, backend: str) -> str:
    """`auto`: MLX on Apple Silicon and for an MLX model directory; llama.cpp for GGUF elsewhere."""
    if backend != "auto":
        return backend
    return "mlx" if path.is_dir() or on_apple_silicon() else "llamacpp"


def open_backend(path: Path, settings: ModelSettings) -> ModelBackend:
    """A backend for `path`, not yet loaded: loading happens on the first turn."""
    kind = choose_backend(path, settings.backend)
    if kind == "mlx":
        from waystation.adapters.models.mlx import MlxBackend

        return MlxBackend(str(path), idle_unload_s=settings.idle_unload_s)
    if kind == "llamacpp":
        from waystation.adapters.models.llamacpp import LlamaCppBackend

        return LlamaCppBackend(str(path), idle_unload_s=settings.idle_unload_s)
    raise ModelError(path, f"unknown backend {kind!r}")


def on_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"
