"""The wire contract, once: the socket API's objects as TypedDicts and its vocabularies as Literals.

CONTRACT.md fixes these shapes; this module only types them. Handlers (agent/api*.py), the
station ops, the CLI client and the renderer annotate with them; the OpenAPI document
(agent/openapi_schemas.py) takes its enums from the Literals, and tests/test_openapi_contract.py
checks every schema's properties, required fields and enums against these classes both ways.
Where code needs a vocabulary's values at run time it asks `typing.get_args(TheLiteral)`.

A key that is NotRequired is one the schema does not require (absent on some objects). Nothing
here may import the rest of waystation: it is core, below everything.
"""

# No `from __future__ import annotations` here: TypedDict reads NotRequired from evaluated
# annotations (under 3.11 a string annotation counts every key as required).
from typing import Any, Literal, NotRequired, TypedDict

# --- vocabularies -------------------------------------------------------------------------------

TaskState = Literal["pending", "running", "done", "dead", "cancelled", "expired"]
TurnState = Literal["running", "parked", "resuming", "deferred", "ok", "refused", "error", "interrupted"]
ConnectivityState = Literal["online", "offline", "portal", "unknown"]
ConnectivityMode = Literal["auto", "online", "offline"]
ReceiptKind = Literal["turn", "task"]
ReceiptStatus = Literal["ok", "parked", "refused", "error"]
AuthLane = Literal["none", "api_key", "seat", "oauth", "credits"]
CostLane = Literal["local", "byok", "provider_subscription", "credits"]
DeliveryOutcome = Literal["done", "retry", "dead", "unreachable"]
ModelFormat = Literal["gguf", "mlx"]
ToolChoiceMode = Literal["auto", "required", "none"]
ChatRole = Literal["system", "developer", "user", "assistant", "tool"]
EventKind = Literal["connectivity", "task", "turn", "receipt"]  # GET /v1/events

JSON = Any  # any JSON value: a tool's arguments and results are the caller's own

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


class PullRequest(TypedDict):
    source: str
    name: NotRequired[str]
    sha256: NotRequired[str]


# --- turns --------------------------------------------------------------------------------------


class NamedTool(TypedDict):
    tool: str


class TurnRequest(TypedDict):
    prompt: str
    route: NotRequired[str]
    model: NotRequired[str]
    system: NotRequired[str]
    max_tokens: NotRequired[int]
    max_steps: NotRequired[int]
    tool_choice: NotRequired[ToolChoiceMode | NamedTool]
    defer: NotRequired[bool]
    stream: NotRequired[bool]
    keep_alive: NotRequired[float | str]


class TurnResult(TypedDict):
    turn_id: str
    text: str
    route: str
    receipt_id: str
    status: ReceiptStatus
    tool_calls: list[dict[str, JSON]]
    deferred_task_ids: list[str]
    usage: Usage
    model: str | None
    model_answered: str | None
    finish_reason: str


class TurnToolCall(TypedDict):
    id: str | None
    tool: str | None
    arguments: JSON
    status: str | None
    task_id: str | None
    task_state: str | None
    result: str | None  # what the call got, in one line (null while it has no answer)


class Turn(TypedDict):
    turn_id: str
    state: TurnState
    route: str | None
    model: str | None
    prompt: str
    text: str | None
    reason: str | None
    tool_calls: list[TurnToolCall]
    receipt_ids: list[str]
    created_at: str
    updated_at: str
    compacted_at: NotRequired[str | None]


# --- the OpenAI-compatible endpoint ---------------------------------------------------------------


class ChatMessage(TypedDict):
    role: ChatRole
    content: NotRequired[str | list[dict[str, JSON]] | None]
    tool_calls: NotRequired[list[dict[str, JSON]]]
    tool_call_id: NotRequired[str]


class StreamOptions(TypedDict):
    include_usage: NotRequired[bool]


class ChatCompletionRequest(TypedDict):
    model: NotRequired[str]
    messages: list[ChatMessage]
    temperature: NotRequired[float]
    max_tokens: NotRequired[int]
    max_completion_tokens: NotRequired[int]
    stream: NotRequired[bool]
    stream_options: NotRequired[StreamOptions]
    tools: NotRequired[list[dict[str, JSON]]]
    tool_choice: NotRequired[ToolChoiceMode | dict[str, JSON]]
    response_format: NotRequired[dict[str, JSON]]
    n: NotRequired[Literal[1]]
    stop: NotRequired[str | list[str]]
    keep_alive: NotRequired[float | str]
    store: NotRequired[bool]


class FunctionCall(TypedDict):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ClientToolCall(TypedDict):
    """A call the model made to one of the client's own tools, in OpenAI's shape."""

    id: str
    type: Literal["function"]
    function: FunctionCall


class CompletionUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionExtra(TypedDict):
    turn_id: str
    receipt_id: str


class ChatCompletion(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[dict[str, JSON]]
    usage: CompletionUsage
    waystation: NotRequired[CompletionExtra]


# The document's component schemas, by name: what tests/test_openapi_contract.py walks.
SCHEMA_TYPES: dict[str, type] = {
    "Error": Error,
    "Task": Task,
    "NewTask": NewTask,
    "RouteInfo": RouteInfo,
    "Route": Route,
    "Usage": Usage,
    "Receipt": Receipt,
    "Verification": Verification,
    "CheckpointToVerify": CheckpointToVerify,
    "Checkpoint": Checkpoint,
    "VerifierKey": VerifierKey,
    "ReceiptProof": ReceiptProof,
    "Probe": Probe,
    "Connectivity": Connectivity,
    "ConnectivityMode": ConnectivityModeRequest,
    "QueueCounts": QueueCounts,
    "ModelStatus": ModelStatus,
    "Status": Status,
    "ModelDetails": ModelDetails,
    "Model": Model,
    "ModelList": ModelList,
    "PartialDownload": PartialDownload,
    "ModelDeleted": ModelDeleted,
    "LoadedModel": LoadedModel,
    "PullRequest": PullRequest,
    "FlushResult": FlushResult,
    "TurnRequest": TurnRequest,
    "TurnResult": TurnResult,
    "Turn": Turn,
    "ChatMessage": ChatMessage,
    "ChatCompletionRequest": ChatCompletionRequest,
    "ChatCompletion": ChatCompletion,
}
