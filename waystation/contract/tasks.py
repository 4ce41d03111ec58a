"""The error body every endpoint answers with, tasks, and the routes and receipts a turn or task leaves."""

# No `from __future__ import annotations` here: TypedDict reads NotRequired from evaluated
# annotations (under 3.11 a string annotation counts every key as required).
from typing import NotRequired, TypedDict

from waystation.contract.vocabularies import JSON, AuthLane, CostLane, ReceiptKind, ReceiptStatus, TaskState

# --- errors -------------------------------------------------------------------------------------


class ErrorBody(TypedDict):
    code: str
    message: str


class Error(TypedDict):
    error: ErrorBody


# --- tasks --------------------------------------------------------------------------------------


class Task(TypedDict):
    id: str
    tool: str
    args: dict[str, JSON]
    idempotency_key: str
    state: TaskState
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    result: JSON
    created_at: str
    updated_at: str
    expires_at: NotRequired[str | None]
    turn_id: str | None


class NewTask(TypedDict):
    tool: str
    args: dict[str, JSON]
    idempotency_key: NotRequired[str]
    expires_at: NotRequired[str]


# --- routes and receipts ------------------------------------------------------------------------


class RouteInfo(TypedDict):
    name: str
    provider: str
    auth_lane: AuthLane
    cost_lane: CostLane
    model: NotRequired[str | None]


class Route(TypedDict):
    name: str
    provider: str
    auth_lane: str
    cost_lane: str
    model: str | None
    available: bool
    reason: str | None
    model_answered: NotRequired[str | None]


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int


class Receipt(TypedDict):
    id: str
    kind: ReceiptKind
    created_at: str
    status: ReceiptStatus
    reason: str | None
    route: RouteInfo
    usage: Usage
    credits_used: float
    duration_ms: int
    turn_id: str | None
    task_id: str | None
    deferred_task_ids: list[str]
    cold_load_ms: NotRequired[int | None]
    model_answered: NotRequired[str | None]
    telemetry: NotRequired[dict[str, str]]
    prev_hash: str
    hash: str


class CheckpointRef(TypedDict):
    origin: str
    size: int
    root_hash: str


class Verification(TypedDict):
    ok: bool
    count: int
    first_broken_id: str | None
    reason: str | None
    checkpoint: CheckpointRef | None


class CheckpointToVerify(TypedDict):
    checkpoint: str


class Checkpoint(TypedDict):
    origin: str
    size: int
    root_hash: str
    note: str


class VerifierKey(TypedDict):
    key: str


class ReceiptProof(TypedDict):
    receipt: Receipt
    leaf_index: int
    tree_size: int
    inclusion_proof: list[str]
    checkpoint: str
