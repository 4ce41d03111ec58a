"""Model operations: list, pull and remove the named models, and what the agent has loaded.

Listing follows OpenAI's `GET /v1/models` (the default model first), each object carrying
Waystation's own account of the model under `waystation`: clients that know only OpenAI's fields
ignore it, and `waystation models ls` reads it. The list's own `waystation` names the downloads in
`.partial/` (under way, or stopped and kept for a resume), with their bytes so far.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from waystation import contract, logs, timeutil
from waystation.adapters.models import pull as pulling
from waystation.adapters.models.embedded import DISTRIBUTION, default_model_path
from waystation.adapters.models.store import EMBEDDED, StoredModel, looks_like_name
from waystation.errors import ModelConflict, ModelError
from waystation.station import Station, TurnStation


async def list_models(station: Station) -> contract.ModelList:
    """`{"object": "list", "data": [...]}`: the default model first, then the named ones (and
    the embedded one, and a configured path, where they are not the default)."""
    configured = station.settings.model.path
    default = _default_id(station, configured)
    entries = [_entry(m) for m in station.models.all()]
    embedded = _embedded()
    if embedded is not None:
        entries.append(_entry(embedded, embedded=True))
    if configured and not looks_like_name(configured) and configured.lower() != EMBEDDED:
        entries.extend(_configured(configured))
    for entry in entries:
        entry["waystation"]["default"] = entry["id"] == default
    entries.sort(key=lambda e: not e["waystation"]["default"])  # stable: the rest keep their order
    partial = [p.to_json() for p in station.models.partials()]
    return {"object": "list", "data": entries, "waystation": {"partial": partial}}


@contextlib.asynccontextmanager
async def prepare_pull(
    station: Station,
    source: str,
    name: str | None = None,
    sha256: str | None = None,
    *,
    token: str | None = None,
    endpoint: str | None = None,
) -> AsyncIterator[pulling.Pull]:
    """Resolve a pull (asking the hub for the file's metadata) and hold its name while the block
    runs, without downloading anything yet, so that a wrong source or name, a name another pull
    holds, or a known size the disk has no room for, is refused before any progress is promised.
    `token` and `endpoint` stand in for HF_TOKEN and HF_ENDPOINT where the caller has its own."""
    plan = await asyncio.to_thread(pulling.plan, source, name, sha256, token=token, endpoint=endpoint)
    for secret in plan.secrets:  # never in a log line, whatever a library prints
        logs.redact_too(secret)
    with pulling.claimed(plan, station.models, station.settings.model.keep_free_mb):
        yield plan


async def pull(
    station: Station, plan: pulling.Pull, on_progress: pulling.ProgressSink | None = None
) -> contract.Model:
    """Download and install a prepared pull; the model's object, as `GET /v1/models` lists it."""
    keep_free_mb = station.settings.model.keep_free_mb
    model = await pulling.download(plan, station.models, on_progress, keep_free_mb=keep_free_mb)
    return _entry(model)


async def pull_source(
    station: Station,
    source: str,
    name: str | None = None,
    sha256: str | None = None,
    on_progress: pulling.ProgressSink | None = None,
) -> contract.Model:
    """Prepare and run a pull in one call (the command line with no agent)."""
    async with prepare_pull(station, source, name, sha256) as plan:
        return await pull(station, plan, on_progress)


async def remove(station: Station, name: str) -> contract.ModelDeleted:
    """Remove a named model (unloading it first where the agent has it in memory)."""
    if name.lower() == EMBEDDED:
        raise ModelConflict(EMBEDDED, f"ships with the {DISTRIBUTION} package and cannot be removed")
    model = station.models.get(name)
    if isinstance(station, TurnStation):
        await station.router.local.forget(model.path)
    station.models.remove(model.name)
    return {"id": model.name, "object": "model", "deleted": True}


def loaded(station: TurnStation) -> list[contract.LoadedModel]:
    """What the agent has in memory now (`waystation models ps`)."""
    return station.router.local.loaded()


def _default_id(station: Station, configured: str) -> str:
    if not configured or configured.lower() == EMBEDDED:
        return EMBEDDED
    if looks_like_name(configured):
        return configured.lower()
    return str(Path(configured).expanduser())


def _configured(configured: str) -> list[contract.Model]:
    """`[model] path` naming a file or directory outside models/: listed, as a turn may use it."""
    path = Path(configured).expanduser()
    if not path.exists():
        return []  # `status` and `doctor` say what is wrong with it
    kind: contract.ModelFormat = "mlx" if path.is_dir() else "gguf"
    return [_entry(StoredModel(str(path), path, kind, _size(path), source="[model] path"))]


def _embedded() -> StoredModel | None:
    try:
        path = default_model_path()
        size = path.stat().st_size
    except (ModelError, OSError):
        return None
    return StoredModel(EMBEDDED, path, "gguf", size, source=f"the {DISTRIBUTION} package")


def _entry(model: StoredModel, *, embedded: bool = False) -> contract.Model:
    created = timeutil.parse_iso(model.pulled_at) if model.pulled_at else _mtime(model.path)
    owner = model.source[3:].split("/", 1)[0] if model.source and model.source.startswith("hf:") else "local"
    return {
        "id": model.name,
        "object": "model",
        "created": int(created),
        "owned_by": owner,
        "waystation": model.to_json(embedded),
    }


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size
