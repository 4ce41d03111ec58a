"""What a GGUF file must be before llama.cpp is let near it, and handing memory back after it.

llama.cpp refuses a file that is not a model late, or crashes on it, and one larger than the
memory available takes the machine down with it: `check_gguf` refuses both early, by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from pathlib import Path

from waystation.errors import ModelError

GGUF_MAGIC = b"GGUF"


def check_gguf(path: Path) -> None:
    """Refuse early, and clearly, what llama.cpp would refuse late or crash on."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
        size = path.stat().st_size
    except FileNotFoundError:
        raise ModelError(path, "no such file") from None
    except IsADirectoryError:
        raise ModelError(path, "is a directory, not a GGUF file (an MLX model? set model.backend)") from None
    except OSError as exc:
        raise ModelError(path, f"cannot read: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise ModelError(path, "not a GGUF file")
    available = _available_memory()
    if available is not None and size > available:
        raise ModelError(
            path, f"too large for memory: {size / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available"
        )


def return_freed_memory() -> None:
    """Hand the unloaded model's heap back to the OS (glibc keeps freed arenas otherwise)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
