"""How much memory a model takes once loaded, estimated before loading it, and how much there is.

A GGUF model costs its weights (the file, mapped whole: every page is touched on the first
prompt) plus the KV cache llama.cpp allocates for the whole context up front: two f16 tensors
(K and V) per layer of `context x kv_heads x head_dim`. SmolLM2-135M at 4096 tokens: 98 MB of
weights and 94 MB of cache, so the file size alone would be half the truth. The compute buffers
(a few MB for small models) are left out. An MLX directory is counted by its files: MLX grows its
cache as it goes, so there is nothing to add up front.

Reading the cache's shape needs only the GGUF header's key-value section, parsed here (a few
milliseconds: the tokenizer's arrays are skipped over, not decoded) so that an estimate costs
nothing like importing llama.cpp.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

GGUF_MAGIC = b"GGUF"
KV_BYTES = 2  # f16, llama.cpp's default cache type
# GGUF value types: their fixed sizes (strings and arrays are read apart).
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_INTS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}
_MAX_KEYS = 1 << 16  # a header claiming more is not a model header


def estimate_bytes(path: Path, context: int) -> int:
    """The memory the model at `path` takes loaded with `context` tokens (0 when unreadable:
    loading it will say what is wrong)."""
    try:
        if path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return path.stat().st_size + kv_cache_bytes(gguf_metadata(path), context)
    except (OSError, ValueError, struct.error):
        return 0


def kv_cache_bytes(meta: dict[str, int | str], context: int) -> int:
    """K and V, f16, for every layer and every token of the context (0 where the header lacks
    the shape: an architecture that names its keys otherwise)."""
    arch = meta.get("general.architecture")
    layers = meta.get(f"{arch}.block_count")
    heads = meta.get(f"{arch}.attention.head_count")
    kv_heads = meta.get(f"{arch}.attention.head_count_kv", heads)
    width = meta.get(f"{arch}.embedding_length")
    if not all(isinstance(v, int) and v > 0 for v in (layers, heads, kv_heads, width)):
        return 0
    assert isinstance(layers, int) and isinstance(heads, int) and isinstance(kv_heads, int)
    assert isinstance(width, int)
    key_dim = meta.get(f"{arch}.attention.key_length", width // heads)
    value_dim = meta.get(f"{arch}.attention.value_length", width // heads)
    if not isinstance(key_dim, int) or not isinstance(value_dim, int):
        return 0
    return layers * context * kv_heads * (key_dim + value_dim) * KV_BYTES


def gguf_metadata(path: Path) -> dict[str, int | str]:
    """The header's integer and string values by key (arrays and floats skipped)."""
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError("not a GGUF file")
        version, _tensors, keys = struct.unpack("<IQQ", f.read(20))
        if version < 2 or keys > _MAX_KEYS:
            raise ValueError(f"unsupported GGUF header (version {version}, {keys} keys)")
        meta: dict[str, int | str] = {}
        for _ in range(keys):
            key = _string(f)
            (kind,) = struct.unpack("<I", f.read(4))
            if kind == _STRING:
                meta[key] = _string(f)
            elif kind in _INTS:
                (meta[key],) = struct.unpack(_INTS[kind], f.read(_FIXED[kind]))
            else:
                _skip(f, kind)
        return meta


def physical_memory() -> int:
    """The machine's RAM in bytes (0 where the platform does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    if length > 1 << 24:
        raise ValueError("a GGUF string longer than any header holds")
    return f.read(length).decode("utf-8", errors="replace")


def _skip(f: BinaryIO, kind: int) -> None:
    if kind in _FIXED:
        f.seek(_FIXED[kind], os.SEEK_CUR)
    elif kind == _STRING:
        (length,) = struct.unpack("<Q", f.read(8))
        f.seek(length, os.SEEK_CUR)
    elif kind == _ARRAY:
        item, count = struct.unpack("<IQ", f.read(12))
        if item in _FIXED:
            f.seek(_FIXED[item] * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _skip(f, item)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")
