"""The contract's vocabularies: every closed set of strings the wire carries, as a Literal.

The OpenAPI document takes its enums from these; code that needs a vocabulary's values at run time
asks `typing.get_args(TheLiteral)`.
"""

from typing import Any, Literal

TaskState = Literal["pending", "running", "done", "dead", "cancelled", "expired"]
TurnState = Literal["running", "parked", "resuming", "deferred", "ok", "refused", "error", "interrupted"]
ConnectivityState = Literal["online", "offline", "portal", "unknown"]
ConnectivityMode = Literal["auto", "online", "offline"]
ReceiptKind = Literal["turn", "task"]
ReceiptStatus = Literal["ok", "parked", "refused", "error"]
AuthLane = Literal["none", "api_key", "seat", "oauth", "credits"]
CostLane = Literal["local", "byok", "provider_subscription", "credits"]
DeliveryOutcome = Literal["done", "retry", "dead", "unreachable", "waiting"]
ModelFormat = Literal["gguf", "mlx"]
ToolChoiceMode = Literal["auto", "required", "none"]
ChatRole = Literal["system", "developer", "user", "assistant", "tool"]
EventKind = Literal["connectivity", "task", "turn", "receipt"]  # GET /v1/events

JSON = Any  # any JSON value: a tool's arguments and results are the caller's own
