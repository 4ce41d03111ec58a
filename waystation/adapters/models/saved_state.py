"""Model state kept on disk for parked turns: the KV cache of a prompt's prefix, by its tokens.

When a turn parks, the prefix its resumed answer will share (the system prompt and the earlier
conversation, as the chat template renders them) is evaluated once more and llama.cpp's state of
that sequence (`llama_state_seq_get_data`) is written here; a later generation whose prompt starts
with those tokens restores it instead of evaluating them, also after `kill -9` and a restart
(batching.py restores, resume_state.py decides what to keep).

One file per saved prefix in `<state>/model-state/`: magic, version, a JSON header (the model's
fingerprint and path, the settings the state depends on, the tokens, the blob's length and
blake2b) and the blob. The name is a hash of (fingerprint, settings, tokens). It is a cache: a
file is written to a temporary name and renamed, without fsync (a torn file fails its check and
is dropped, and the prefix is evaluated again). Whatever does not match (another model, other
settings, a bad magic, a checksum that fails) is never restored: a full prefill, never wrong
output. The directory holds at most `[model] saved_state_mb`, the least recently used file (its
mtime, touched on use) dropped first.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

MAGIC = b"WSKVSTAT"
VERSION = 1
SUFFIX = ".kv"
FINGERPRINT_SPAN = 1 << 20  # bytes hashed at each end of the model file
MIN_TOKENS = 64  # a shorter prefix costs less to evaluate than a file to write and read back
_HEAD = struct.Struct("<8sII")  # magic, version, header length


def fingerprint(path: Path) -> str:
    """Which model file this is, cheaply: its size, mtime_ns, and a hash of its first and last
    MiB. Hashing a multi-GB file whole would cost seconds at each load; a file replaced by another
    (a re-pull, a new quantization) differs in size, in mtime, or in its header and tensor data at
    either end, and a state from the wrong file is caught again by llama.cpp's own size checks."""
    stat = path.stat()
    digest = hashlib.blake2b(f"{stat.st_size}:{stat.st_mtime_ns}".encode(), digest_size=16)
    with path.open("rb") as f:
        digest.update(f.read(FINGERPRINT_SPAN))
        f.seek(max(0, stat.st_size - FINGERPRINT_SPAN))
        digest.update(f.read(FINGERPRINT_SPAN))
    return digest.hexdigest()


@dataclass(frozen=True)
class Entry:
    name: str  # the file's name in the directory
    tokens: tuple[int, ...]
    size: int  # bytes of the file


@dataclass(frozen=True)
class Found:
    """A saved prefix a prompt shares `shared` tokens with, and its state, checked."""

    tokens: tuple[int, ...]
    shared: int
    blob: bytes


class SavedStates:
    """The saved prefixes of one model under one set of settings, in a directory other models'
    (and other settings') files share: the budget counts them all."""

    def __init__(
        self, root: Path, limit_bytes: int, model: Path, model_fingerprint: str, settings: Mapping[str, Any]
    ) -> None:
        self.root = root
        self.limit_bytes = limit_bytes
        self._model = str(model)
        self._identity = {"fingerprint": model_fingerprint, "settings": dict(settings)}
        self._lock = threading.RLock()  # generations look up on their own threads, saves on others
        self._entries: dict[str, Entry] | None = None  # this model's, by name; None: not read yet
        self.saved = 0  # states written since it opened, for /metrics
        self._last_use = 0  # the last mtime it gave a file (ns)

    # --- looking up ---------------------------------------------------------------------------

    def longest(self, prompt: Sequence[int], better_than: int = 0) -> Entry | None:
        """The saved prefix sharing the most tokens with `prompt`, when that is at least
        MIN_TOKENS and more than `better_than` (what a sequence slot shares already)."""
        best, best_shared = None, max(better_than, MIN_TOKENS - 1)
        for entry in self._listed():
            shared = common_prefix(entry.tokens, prompt)
            if shared > best_shared:
                best, best_shared = entry, shared
        return best

    def read(self, entry: Entry, prompt: Sequence[int]) -> Found | None:
        """The entry's state, checked against this model, these settings and its own checksum;
        None (and the file dropped) when anything does not match."""
        path = self.root / entry.name
        try:
            with path.open("rb") as f:
                header, blob = _read(f)
        except (OSError, ValueError) as exc:
            self._drop(entry.name, f"unreadable ({exc})")
            return None
        problem = self._mismatch(header)
        if problem is None and tuple(header.get("tokens", ())) != entry.tokens:
            problem = "other tokens than its name says"
        if problem is None and hashlib.blake2b(blob).hexdigest() != header.get("blake2b"):
            problem = "its checksum fails"
        if problem is not None:
            self._drop(entry.name, problem)
            return None
        self._touch(path)  # used now: the last to be dropped
        return Found(entry.tokens, common_prefix(entry.tokens, prompt), blob)

    def has(self, tokens: Sequence[int]) -> bool:
        """Whether exactly this prefix is saved (touched, as if used, when it is)."""
        name = self._name(tokens)
        if name not in self._index():
            return False
        self._touch(self.root / name)
        return True

    def drop(self, tokens: Sequence[int], problem: str) -> None:
        """Drop the saved state of `tokens` (one that proved unusable)."""
        self._drop(self._name(tokens), problem)

    def usage(self) -> tuple[int, int]:
        """(entries, bytes) of this model's saved prefixes."""
        entries = self._listed()
        return len(entries), sum(e.size for e in entries)

    # --- saving -------------------------------------------------------------------------------

    def write(self, tokens: Sequence[int], blob: bytes) -> bool:
        """Keep `blob`, the state after `tokens`; then drop the least recently used files past
        the budget. A state larger than the whole budget is not written."""
        header = {
            **self._identity,
            "model": self._model,
            "tokens": list(tokens),
            "blob_bytes": len(blob),
            "blake2b": hashlib.blake2b(blob).hexdigest(),
        }
        raw = json.dumps(header, separators=(",", ":")).encode()
        size = _HEAD.size + len(raw) + len(blob)
        if size > self.limit_bytes:
            log.info("model state not saved: larger than [model] saved_state_mb", bytes=size)
            return False
        name = self._name(tokens)
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.root / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            # No fsync: a cache. After a power cut a torn file fails its checksum and is dropped.
            with temporary.open("wb") as f:
                f.write(_HEAD.pack(MAGIC, VERSION, len(raw)))
                f.write(raw)
                f.write(blob)
            temporary.replace(self.root / name)
            self._touch(self.root / name)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            log.info("model state not saved", error=str(exc))
            return False
        with self._lock:
            self._index()[name] = Entry(name, tuple(tokens), size)
            self.saved += 1
        self._trim()
        return True

    # --- the directory ------------------------------------------------------------------------

    def _index(self) -> dict[str, Entry]:
        """This model's entries, read from the files' headers at the first use; files of this
        model under other settings, or of a model file since changed, are dropped then."""
        with self._lock:
            if self._entries is None:
                self._entries = {}
                for path in _files(self.root):
                    self._indexed(path)
            return self._entries

    def _listed(self) -> list[Entry]:
        """This model's entries now (a copy: saves and drops change the index meanwhile)."""
        with self._lock:
            return list(self._index().values())

    def _indexed(self, path: Path) -> None:
        assert self._entries is not None
        try:
            with path.open("rb") as f:
                header = _read_header(f)
                start = f.tell()  # where the blob begins
            size = path.stat().st_size
        except (OSError, ValueError) as exc:
            self._drop(path.name, f"unreadable ({exc})")
            return
        if header.get("model") != self._model:
            return  # another model's: it checks them itself
        problem = self._mismatch(header)
        if problem is not None:
            self._drop(path.name, problem)
        elif start + int(header.get("blob_bytes", -1)) != size:
            self._drop(path.name, "truncated")
        else:
            self._entries[path.name] = Entry(path.name, tuple(header.get("tokens", ())), size)

    def _mismatch(self, header: Mapping[str, Any]) -> str | None:
        if header.get("fingerprint") != self._identity["fingerprint"]:
            return "made from another model file (or the file changed)"
        if header.get("settings") != self._identity["settings"]:
            return f"made under other settings ({header.get('settings')})"
        return None

    def _trim(self) -> None:
        """Drop the least recently used files until the directory fits the budget."""
        files = _stats(self.root)
        total = sum(size for _, size, _ in files)
        for _, size, name in sorted(files):
            if total <= self.limit_bytes:
                break
            self._drop(name, None)
            total -= size

    def _drop(self, name: str, problem: str | None) -> None:
        """Remove a file: a bad one (`problem` logged), or one the budget has no room for."""
        if problem is not None:
            log.info("saved model state dropped", file=name, problem=problem)
        with contextlib.suppress(OSError):
            (self.root / name).unlink()
        with self._lock:  # (reentrant: _index holds it while it reads the headers)
            if self._entries is not None:
                self._entries.pop(name, None)

    def _touch(self, path: Path) -> None:
        """Mark a file used now: its mtime, later than any this process gave before (a file
        system's clock may tick coarser than two uses)."""
        with self._lock:
            self._last_use = max(time.time_ns(), self._last_use + 1)
            when = self._last_use
        with contextlib.suppress(OSError):
            os.utime(path, ns=(when, when))

    def _name(self, tokens: Sequence[int]) -> str:
        key = json.dumps([self._identity, list(tokens)], sort_keys=True).encode()
        return hashlib.blake2b(key, digest_size=20).hexdigest() + SUFFIX


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens `a` and `b` start with alike: compared in slices (C speed), halving."""
    low, high = 0, min(len(a), len(b))
    if list(a[:high]) == list(b[:high]):
        return high
    while low < high - 1:  # a[:low] == b[:low], a[:high] != b[:high]
        mid = (low + high) // 2
        if list(a[low:mid]) == list(b[low:mid]):
            low = mid
        else:
            high = mid
    return low


def restore_into(lib: Any, ctx: Any, memory: Any, seq: int, blob: bytes) -> bool:
    """Start sequence `seq` of a llama.cpp context from a saved state; whether llama.cpp took it
    (when not, the sequence is left empty: its prompt is evaluated whole)."""
    lib.llama_memory_seq_rm(memory, seq, -1, -1)
    source = ctypes.cast(ctypes.c_char_p(blob), ctypes.POINTER(ctypes.c_uint8))  # (no copy)
    if lib.llama_state_seq_set_data(ctx, source, len(blob), seq) == len(blob):
        return True
    lib.llama_memory_seq_rm(memory, seq, -1, -1)
    return False


def copy_out(lib: Any, ctx: Any, seq: int) -> bytes | None:
    """The state of sequence `seq` of a llama.cpp context (its KV cells), as a saved state."""
    size = lib.llama_state_seq_get_size(ctx, seq)
    buffer = (ctypes.c_uint8 * size)()
    written = lib.llama_state_seq_get_data(ctx, buffer, size, seq)
    return ctypes.string_at(buffer, written) if written else None


def directory_bytes(root: Path) -> int:
    """Bytes the saved states take in `root` (every model's), for /metrics."""
    return sum(size for _, size, _ in _stats(root))


def _stats(root: Path) -> list[tuple[int, int, str]]:
    """(mtime_ns, size, name) of each saved state in `root`; one removed meanwhile is left out."""
    found = []
    for path in _files(root):
        with contextlib.suppress(OSError):
            stat = path.stat()
            found.append((stat.st_mtime_ns, stat.st_size, path.name))
    return found


def _files(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith(".")]
    except OSError:
        return []


def _read_header(f: Any) -> dict[str, Any]:
    head = f.read(_HEAD.size)
    if len(head) < _HEAD.size:
        raise ValueError("shorter than its header")
    magic, version, length = _HEAD.unpack(head)
    if magic != MAGIC or version != VERSION:
        raise ValueError("not a saved state of this version")
    raw = f.read(length)
    if len(raw) < length:
        raise ValueError("shorter than its header")
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ValueError("a header that is not an object")
    return header


def _read(f: Any) -> tuple[dict[str, Any], bytes]:
    header = _read_header(f)
    length = int(header.get("blob_bytes", -1))
    blob = f.read(length + 1)
    if len(blob) != length:
        raise ValueError("truncated" if len(blob) < length else "longer than its header says")
    return header, blob
