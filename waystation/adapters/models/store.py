"""Named models in the state directory's `models/`: what `waystation models` lists, pulls into
and removes, and what a turn's `model` may name.

    models/NAME.gguf     a GGUF model
    models/NAME/         an MLX model directory (config.json beside its weights)
    models/NAME.json     what `models pull` recorded: source, sha256, size, when. A model put
                         there by hand has none and is listed all the same.
    models/.partial/     downloads under way, kept when one stops so that the same pull resumes;
                         KEY.partial.json beside each says its name and source, NAME.lock is
                         held while a pull of NAME runs

A name is lower case (a name given in capitals is the same name: on macOS's file system it would
be the same file anyway), and never looks like a path, so `--model X` is a name or a path at a
glance. `embedded` is reserved for the model the package ships.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waystation import contract, durable
from waystation.contract import ModelFormat
from waystation.errors import MalformedRequest, UnknownModel

EMBEDDED = "embedded"
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
GGUF = ".gguf"
RECORD = ".json"
PARTIAL_DIR = ".partial"
PARTIAL = ".partial"


@dataclass(frozen=True)
class StoredModel:
    name: str
    path: Path
    format: ModelFormat
    size: int  # bytes on disk (the weights: about what loading it takes)
    sha256: str | None = None  # of the GGUF file, when a pull recorded it
    source: str | None = None  # what it was pulled from (a URL without its credentials)
    pulled_at: str | None = None  # ISO 8601 UTC
    verified: bool = False  # the sha256 was checked against one its source (or --sha256) gave

    def to_json(self, embedded: bool = False) -> contract.ModelDetails:
        """Its `waystation` object in `GET /v1/models` (the caller says which one is the default)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "format": self.format,
            "size": self.size,
            "sha256": self.sha256,
            "source": self.source,
            "pulled_at": self.pulled_at,
            "verified": self.verified,
            "embedded": embedded,
            "default": False,
        }


@dataclass(frozen=True)
class PartialDownload:
    """A download under way or stopped, in `.partial/`: what `models ls` and `doctor` show."""

    name: str | None  # the name it will be installed under (None: no note beside it)
    source: str | None
    size: int  # bytes so far
    path: Path

    def to_json(self) -> contract.PartialDownload:
        return {"name": self.name, "source": self.source, "size": self.size, "path": str(self.path)}


def partial_note(partial: Path) -> Path:
    """Where a partial download's name, source and validator are noted."""
    return partial.with_name(partial.name + RECORD)


def check_name(name: str) -> str:
    """The name as stored (lower case), or MalformedRequest saying what a name may be."""
    lowered = name.lower()
    if not NAME.fullmatch(lowered) or lowered.endswith((GGUF, RECORD)) or lowered == EMBEDDED:
        raise MalformedRequest(
            f"{name!r} cannot name a model: use letters, digits, '.', '_' and '-' (up to 128, starting "
            f"with a letter or digit, not ending in .gguf or .json, not {EMBEDDED!r})"
        )
    return lowered


def looks_like_name(text: str) -> bool:
    """Whether `--model text` means a name rather than a path: no slash, no .gguf, no ~."""
    return bool(NAME.fullmatch(text.lower())) and not text.lower().endswith(GGUF)


def default_name(filename: str) -> str | None:
    """The name a pulled file gets unless told otherwise: SmolLM2-135M-Instruct-Q8_0.gguf ->
    smollm2-135m-instruct-q8_0 (lower case, the .gguf dropped, other characters as '-')."""
    stem = filename.rsplit("/", 1)[-1]
    if stem.lower().endswith(GGUF):
        stem = stem[: -len(GGUF)]
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")[:128]
    try:
        return check_name(cleaned) if cleaned else None
    except MalformedRequest:
        return None


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def find(self, name: str) -> StoredModel | None:
        """The model of that name (any case), or None."""
        name = name.lower()
        if not NAME.fullmatch(name):
            return None
        gguf = self.root / f"{name}{GGUF}"
        if gguf.is_file():
            return self._model(name, gguf, "gguf")
        folder = self.root / name
        if (folder / "config.json").is_file():
            return self._model(name, folder, "mlx")
        return None

    def get(self, name: str) -> StoredModel:
        found = self.find(name)
        if found is None:
            raise UnknownModel(name)
        return found

    def all(self) -> list[StoredModel]:
        try:
            entries = sorted(self.root.iterdir())
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            name = entry.name[: -len(GGUF)] if entry.name.endswith(GGUF) else entry.name
            model = self.find(name) if NAME.fullmatch(name) else None
            if model is not None and model.path == entry:
                found.append(model)
        return found

    def remove(self, name: str) -> StoredModel:
        model = self.get(name)
        if model.format == "gguf":
            model.path.unlink(missing_ok=True)
        else:
            _remove_tree(model.path)
        (self.root / f"{model.name}{RECORD}").unlink(missing_ok=True)
        return model

    def partials(self) -> list[PartialDownload]:
        """The downloads in `.partial/`, each with its bytes so far."""
        found = []
        for path in sorted((self.root / PARTIAL_DIR).glob(f"*{PARTIAL}")):
            with contextlib.suppress(OSError):  # gone meanwhile: finished, or deleted
                note = _read_record(partial_note(path))
                found.append(
                    PartialDownload(
                        _str(note.get("name")), _str(note.get("source")), path.stat().st_size, path
                    )
                )
        return found

    def pull_lock(self, name: str) -> Path:
        """The file a pull of `name` holds locked while it runs (try_lock)."""
        return self.root / PARTIAL_DIR / f"{name}.lock"

    def partial(self, key: str) -> Path:
        """Where a download under `key` (content-addressed where its sha256 is known) accumulates."""
        return self.root / PARTIAL_DIR / f"{key}{PARTIAL}"

    def forget_download(self, key: str) -> None:
        """The download under `key` (a sha256) of a model installed and up to date, dropped: a
        power cut after the rename into models/ was made durable there and before its removal
        from `.partial/` was (install syncs the two directories in turn, the new name first)
        leaves the same file under both names. Kept while another pull of the same bytes (under
        another name) holds it."""
        partial = self.partial(key)
        try:
            fd = os.open(partial, os.O_RDWR)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            partial.unlink(missing_ok=True)
            partial_note(partial).unlink(missing_ok=True)
        except BlockingIOError:
            return
        finally:
            os.close(fd)
        self.tidy()

    def install(self, name: str, downloaded: Path, record: dict[str, Any]) -> StoredModel:
        """Move a complete, verified GGUF file in under `name` (replacing an older one of that name),
        its record first: a model appears only whole, with what is known of it."""
        durable.make_dirs(self.root)
        target = self.root / f"{name}{GGUF}"
        record_path = self.root / f"{name}{RECORD}"
        # The file it describes, by its modification time too: a power cut between the record's
        # write and the rename below leaves an update's new record beside the old file (see _model).
        record = {**record, "mtime_ns": downloaded.stat().st_mtime_ns}
        durable.write_atomic(record_path, json.dumps(record, indent=2) + "\n", 0o644)
        durable.move_into(downloaded, target)  # the download was synced as it ended
        self.tidy()
        return self.get(name)

    def tidy(self) -> None:
        """Remove the downloads directory once nothing is left in it."""
        with contextlib.suppress(OSError):
            (self.root / PARTIAL_DIR).rmdir()

    def _model(self, name: str, path: Path, kind: ModelFormat) -> StoredModel:
        record = _read_record(self.root / f"{name}{RECORD}")
        size = path.stat().st_size if kind == "gguf" else _tree_size(path)
        if kind == "gguf" and not _describes(record, size, path.stat().st_mtime_ns):
            # Another file's record (an update cut short by a power cut, a file replaced by hand):
            # what it says of the bytes is not believed; its source still names the model's.
            record = {"source": record.get("source")}
        return StoredModel(
            name=name,
            path=path,
            format=kind,
            size=size,
            sha256=_str(record.get("sha256")),
            source=_str(record.get("source")),
            pulled_at=_str(record.get("pulled_at")),
            verified=record.get("verified") is True,
        )


def _read_record(path: Path) -> dict[str, Any]:
    """A model's record; a missing or damaged one reads as empty (the model itself is still there)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _describes(record: dict[str, Any], size: int, mtime_ns: int) -> bool:
    """Whether a record is this file's: its size and (written since issue 24) its modification
    time, where it gives them."""
    return bool(record.get("size", size) == size and record.get("mtime_ns", mtime_ns) == mtime_ns)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _tree_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _remove_tree(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder)


def try_lock(path: Path) -> int | None:
    """A descriptor holding `path` locked (created if need be), or None while another holds it.
    Its holder removes the file before letting go, so a lock taken on a file since removed is
    dropped and taken again on the file now there (else two could hold "the" lock at once)."""
    while True:
        durable.make_dirs(path.parent)  # models/ itself too: what is pulled into it must last
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            continue  # another pull's tidy() removed the empty folder meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)
