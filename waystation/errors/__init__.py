"""One exception tree for Waystation, split by domain; every class is importable from here.

    WaystationError                  code, message, http_status, exit_code           base.py
    ├── ConfigError(key)             a bad config file or value; start-up stops      station.py
    ├── DatabaseError(path)          the database file cannot be used                station.py
    │   ├── DatabaseLocked           another process holds the write lock too long
    │   ├── DatabaseReadOnly         the file or its directory is not writable
    │   ├── DatabaseCorrupt          not a SQLite database, or damaged
    │   ├── DatabaseTooNew           written by a newer Waystation (schema version)
    │   ├── DatabaseForeign          another application's SQLite database: never adopted
    │   └── DiskFull                 no space left for the write (507)
    ├── AgentNotRunning(socket)      a command that needs the agent found none (exit 3)  station.py
    ├── ReceiptsDamaged(problem)     the receipts' tree lacks what they say it holds (500)  station.py
    ├── SigningKeyUnusable(path, problem)  receipts.key cannot be read as a key: checkpoints go
    │                                unsigned, the queue works on (503)             station.py
    ├── CheckpointKept(path, problem)  receipts.checkpoint is not replaced by one of another
    │                                origin or one the receipts do not extend (409)  station.py
    ├── InputError                   the caller's request is wrong (4xx)            input.py
    │   ├── MalformedRequest         not JSON, or not the expected shape (400)
    │   ├── RequestTimeout           the request did not arrive in time (408)
    │   ├── BodyTooLarge             over the documented limit (413)
    │   ├── UnknownTool(tool)        (422)
    │   ├── InvalidArguments(tool)   (422)
    │   ├── WorkRefused              fleet work this host does not take (403)
    │   ├── NotFound(kind, ident)    (404)
    │   ├── IdempotencyConflict(key) same key, other arguments (409)
    │   ├── InvalidTransition(...)   e.g. cancelling a task that is done (409)
    │   ├── EmptyPrompt              a turn needs a prompt (400)
    │   ├── NoUrlToCall(tool_choice) a call was demanded and the prompt names no URL (400)
    │   ├── UnsupportedParameter(parameter, problem)  one we cannot honour, never dropped (400)
    │   ├── BadCheckpoint            a checkpoint, proof or key malformed or not signed so (422)
    │   ├── PromptTooLong            longer than the model's context (400)
    │   └── TooManyItems(parameter)  more messages or tools than a request may hold (400)
    ├── ModelError(path)             the file cannot be used: missing, not a model, too big (422)  models.py
    ├── UnknownModel(name)           no model of that name in the state directory's models/ (404)
    ├── ModelConflict(name, problem) the name is taken, a pull of it is under way, ... (409)
    ├── PullFailed(source, problem)  a model download did not complete (502; resumable)
    │   ├── PullNoSpace              it would fill the disk: what arrived is deleted (507)
    │   └── ChecksumMismatch         the file is not the one its source vouches for (422; discarded)
    ├── ProviderError(route, status) a provider route failed in a way that may pass (429, 5xx)  turns.py
    ├── ProviderRejected(route, ...) the provider refused the request itself (unknown model...)
    ├── SeatRunFailed(route, ...)    a seat CLI ended without an answer (its output never shown)
    ├── TurnTimeout(limit_s)         a turn ran past its wall-clock limit (504)
    ├── TurnFailed(turn_id, problem) a turn failed in a way nobody foresaw; it ended `error`
    │                                with its receipt, never left `running` (500)
    ├── ReplyCutOff(max_tokens)      the model's reply ended inside a tool call (422)
    ├── RouteRefused(route, reason)  fail-closed: the named route cannot run (exit 4)
    │   └── RouteOffline             ... because it needs the network and the host is offline
    ├── DestinationRefused(host, address, kind, rule)  a delivery may not connect there: a model's
    │                                call (or its redirect) to a loopback, link-local or private
    │                                address (403)                                  delivery.py
    ├── DeliveryError                a tool delivery did not get an answer          delivery.py
    │   └── NetworkUnreachable       connection, DNS or timeout: transient, no attempt counted
    └── FleetError                   the fleet's hub (NATS JetStream) cannot be used (503)  fleet.py
        ├── FleetUnavailable         the hub did not answer in time: retried, never lost
        └── FleetRefused             the hub answered no: no JetStream, bad credentials, ...

Foreign exceptions (sqlite3, httpx, ...) are translated into these at the adapter boundary,
by error code or exception type, never by their message text.

An error crosses the socket as `to_json()` (wire.py): its code, its message and its `details()`,
the arguments its constructor took. Each constructor keeps every argument as an attribute of the
same name (that is the whole declaration), so the reader rebuilds the error through its
constructor: `NotFound.ident` or `RouteRefused.reason` are there on the other side too.

Each class's public home is this package: its `__module__` is set to `waystation.errors` below (as
trio does for its public names), so tracebacks and the readers that collect the tree from here
(the CLI's client rebuilding an agent's error by its code) see one module, however it is split.
"""

from __future__ import annotations

from waystation.errors.base import WaystationError
from waystation.errors.delivery import DeliveryError, DestinationRefused, NetworkUnreachable
from waystation.errors.fleet import FleetError, FleetRefused, FleetUnavailable
from waystation.errors.input import (
    BadCheckpoint,
    BodyTooLarge,
    EmptyPrompt,
    IdempotencyConflict,
    InputError,
    InvalidArguments,
    InvalidTransition,
    MalformedRequest,
    NotFound,
    NoUrlToCall,
    PromptTooLong,
    RequestTimeout,
    TooManyItems,
    UnknownTool,
    UnsupportedParameter,
    WorkRefused,
)
from waystation.errors.models import (
    ChecksumMismatch,
    ModelConflict,
    ModelError,
    PullFailed,
    PullNoSpace,
    UnknownModel,
)
from waystation.errors.station import (
    AgentNotRunning,
    CheckpointKept,
    ConfigError,
    DatabaseCorrupt,
    DatabaseError,
    DatabaseForeign,
    DatabaseLocked,
    DatabaseReadOnly,
    DatabaseTooNew,
    DiskFull,
    ReceiptsDamaged,
    SigningKeyUnusable,
)
from waystation.errors.turns import (
    ProviderError,
    ProviderRejected,
    ReplyCutOff,
    RouteOffline,
    RouteRefused,
    SeatRunFailed,
    TurnFailed,
    TurnTimeout,
)
from waystation.errors.wire import constructor_fields, error_body

__all__ = [
    "AgentNotRunning",
    "BadCheckpoint",
    "BodyTooLarge",
    "CheckpointKept",
    "ChecksumMismatch",
    "ConfigError",
    "DatabaseCorrupt",
    "DatabaseError",
    "DatabaseForeign",
    "DatabaseLocked",
    "DatabaseReadOnly",
    "DatabaseTooNew",
    "DeliveryError",
    "DestinationRefused",
    "DiskFull",
    "EmptyPrompt",
    "FleetError",
    "FleetRefused",
    "FleetUnavailable",
    "IdempotencyConflict",
    "InputError",
    "InvalidArguments",
    "InvalidTransition",
    "MalformedRequest",
    "ModelConflict",
    "ModelError",
    "NetworkUnreachable",
    "NoUrlToCall",
    "NotFound",
    "PromptTooLong",
    "ProviderError",
    "ProviderRejected",
    "PullFailed",
    "PullNoSpace",
    "ReceiptsDamaged",
    "ReplyCutOff",
    "RequestTimeout",
    "RouteOffline",
    "RouteRefused",
    "SeatRunFailed",
    "SigningKeyUnusable",
    "TooManyItems",
    "TurnFailed",
    "TurnTimeout",
    "UnknownModel",
    "UnknownTool",
    "UnsupportedParameter",
    "WaystationError",
    "WorkRefused",
    "constructor_fields",  # the wire format's pieces, used beside the tree
    "error_body",
]

for _name in __all__:
    _public = globals()[_name]
    if isinstance(_public, type):
        _public.__module__ = __name__
del _name, _public
