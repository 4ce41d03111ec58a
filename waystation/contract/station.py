"""The station's state (status, connectivity, the queue's counts, a flush) and its models."""

# No `from __future__ import annotations` here: TypedDict reads NotRequired from evaluated
# annotations (under 3.11 a string annotation counts every key as required).
from typing import Literal, NotRequired, TypedDict

from waystation.contract.tasks import Route
from waystation.contract.vocabularies import ConnectivityMode, ConnectivityState, ModelFormat

# --- the queue ----------------------------------------------------------------------------------


class QueueCounts(TypedDict):
    pending: int
    running: int
    done: int
    dead: int
    cancelled: int
    expired: int


class FlushResult(TypedDict):
    pending: int
    connectivity: str
    metered: bool
    message: str


# --- status -------------------------------------------------------------------------------------


class Probe(TypedDict):
    at: str
    ok: bool
    status: NotRequired[int | None]
    error: NotRequired[str | None]
    duration_ms: NotRequired[int]


class Connectivity(TypedDict):
    state: ConnectivityState
    mode: ConnectivityMode
    since: str | None
    last_probe: Probe | None
    metered: bool


class ConnectivityModeRequest(TypedDict):
    mode: ConnectivityMode


class ModelStatus(TypedDict):
    backend: str
    path: str
    loaded: bool
    threads: NotRequired[int | None]


class Signing(TypedDict):
    ok: bool
    error: str | None


class Status(TypedDict):
    version: str
    uptime_s: float
    connectivity: Connectivity
    queue: QueueCounts
    model: ModelStatus
    routes: list[Route]
    turns: dict[str, int]  # turns by state
    signing: NotRequired[Signing]
    listen: NotRequired[str | None]  # [agent] listen: the listener's address, None when off


# --- models -------------------------------------------------------------------------------------


class ModelDetails(TypedDict):
    name: str
    path: str
    format: ModelFormat
    size: int
    sha256: str | None
    source: str | None
    pulled_at: str | None
    verified: bool
    embedded: bool
    default: bool


class Model(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    waystation: NotRequired[ModelDetails]


class PartialDownload(TypedDict):
    name: str | None
    source: str | None
    size: int
    path: str


class ModelListExtra(TypedDict):
    partial: list[PartialDownload]


class ModelList(TypedDict):
    object: Literal["list"]
    data: list[Model]
    waystation: NotRequired[ModelListExtra]


class ModelDeleted(TypedDict):
    id: str
    object: Literal["model"]
    deleted: Literal[True]


class SavedState(TypedDict):
    entries: int  # this model's saved prefixes
    bytes: int  # their size on disk
    limit_bytes: int  # [model] saved_state_mb, for every model's together


class LoadedModel(TypedDict):
    name: str
    path: str
    backend: str
    size: int
    memory: int
    loaded_at: str | None
    unloads_at: str | None
    until: str
    busy: bool
    sequences: int  # generating now
    waiting: int  # requests waiting for a sequence (or, serial, for the one generating)
    parallel: int  # sequences it generates at once; 0: one at a time (serial)
    saved_state: SavedState | None  # parked turns' model state on disk; None: not kept (off)


class PullRequest(TypedDict):
    source: str
    name: NotRequired[str]
    sha256: NotRequired[str]
