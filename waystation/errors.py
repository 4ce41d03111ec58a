"""One exception tree for Waystation.

    WaystationError                  code, message, http_status, exit_code
    ├── ConfigError(key)             a bad config file or value; start-up stops
    ├── DatabaseError(path)          the database file cannot be used
    │   ├── DatabaseLocked           another process holds the write lock too long
    │   ├── DatabaseReadOnly         the file or its directory is not writable
    │   ├── DatabaseCorrupt          not a SQLite database, or damaged
    │   ├── DatabaseTooNew           written by a newer Waystation (schema version)
    │   ├── DatabaseForeign          another application's SQLite database: never adopted
    │   └── DiskFull                 no space left for the write
    ├── InputError                   the caller's request is wrong (4xx)
    │   ├── MalformedRequest         not JSON, or not the expected shape (400)
    │   ├── BodyTooLarge             over the documented limit (413)
    │   ├── UnknownTool(tool)        (422)
    │   ├── InvalidArguments(tool)   (422)
    │   ├── NotFound(kind, ident)    (404)
    │   ├── WorkRefused              fleet work this host does not take (403)
    │   ├── IdempotencyConflict(key) same key, other arguments (409)
    │   ├── InvalidTransition(...)   e.g. cancelling a task that is done (409)
    │   ├── EmptyPrompt              a turn needs a prompt (400)
    │   ├── NoUrlToCall(tool_choice) a call was demanded and the prompt names no URL (400)
    │   ├── UnsupportedParameter(parameter, problem)  one we cannot honour, never dropped (400)
    │   ├── BadCheckpoint            a checkpoint, proof or key malformed or not signed so (422)
    │   ├── PromptTooLong            longer than the model's context (400)
    │   └── TooManyItems(parameter)  more messages or tools than a request may hold (400)
    ├── ModelError(path)             the model file cannot be used: missing, not a model, too big (422)
    ├── UnknownModel(name)           no model of that name in the state directory's models/ (404)
    ├── ModelConflict(name, problem) the name is taken, a pull of it is under way, ... (409)
    ├── PullFailed(source, problem)  a model download did not complete (502; resumable)
    │   └── ChecksumMismatch         the file is not the one its source vouches for (422; discarded)
    ├── ProviderError(route, status) a provider route failed in a way that may pass (429, 5xx)
    ├── ProviderRejected(route, ...) the provider refused the request itself (unknown model...)
    ├── SeatRunFailed(route, ...)    a seat CLI ended without an answer (its output never shown)
    ├── TurnTimeout(limit_s)         a turn ran past its wall-clock limit (504)
    ├── TurnFailed(turn_id, problem) a turn failed in a way nobody foresaw; it ended `error`
    │                                with its receipt, never left `running` (500)
    ├── ReplyCutOff(max_tokens)      the model's reply ended inside a tool call (422)
    ├── AgentNotRunning(socket)      a command that needs the agent found none (exit 3)
    ├── RouteRefused(route, reason)  fail-closed: the named route cannot run (exit 4)
    │   └── RouteOffline             ... because it needs the network and the host is offline
    ├── ReceiptsDamaged(problem)     the receipts' tree lacks what they say it holds (500)
    ├── SigningKeyUnusable(path, problem)  receipts.key cannot be read as a key: checkpoints go
    │                                unsigned, the queue works on (503)
    ├── DestinationRefused(host, address, kind, rule)  a delivery may not connect there: a model's
    │                                call (or its redirect) to a loopback, link-local or private address (403)
    └── DeliveryError                a tool delivery did not get an answer
        └── NetworkUnreachable       connection, DNS or timeout: transient, no attempt counted

Foreign exceptions (sqlite3, httpx, ...) are translated into these at the adapter boundary,
by error code or exception type, never by their message text.

An error crosses the socket as `to_json()`: its code, its message and its `details()`, the
arguments its constructor took. Each constructor keeps every argument as an attribute of the same
name (that is the whole declaration), so the reader rebuilds the error through its constructor:
`NotFound.ident` or `RouteRefused.reason` are there on the other side too.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from waystation.error_fields import constructor_fields, error_body, json_value

__all__ = ["constructor_fields", "error_body"]  # the wire format's pieces, used beside the tree


class WaystationError(Exception):
    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> dict[str, Any]:
        """The constructor's arguments by name, as JSON values: `type(self)(**details)` builds
        this error again (a `message` argument is the error's message, sent beside the details)."""
        return {
            name: json_value(getattr(self, name))
            for name in constructor_fields(type(self))
            if name != "message" and hasattr(self, name)
        }

    def to_json(self) -> dict[str, object]:
        return error_body(self.code, self.message, self.details())

    @classmethod
    def from_json(cls, message: str, details: object = None) -> Self:
        """The error `to_json()` described, built through the constructor from `details` so its
        fields are set. Details that are absent (an older agent) or do not fit the constructor give
        an instance carrying the message alone. The message is always the one that was sent."""
        fields = constructor_fields(cls)
        if isinstance(details, dict) or set(fields) <= {"message"}:
            given = details if isinstance(details, dict) else {}
            arguments = {name: given[name] for name in fields if name in given}
            if "message" in fields:
                arguments["message"] = message
            try:
                error = cls(**arguments)
            except (TypeError, ValueError):
                pass
            else:
                if error.message != message:  # another version words it otherwise: keep its words
                    error.message = message
                    error.args = (message,)
                return error
        error = cls.__new__(cls)
        WaystationError.__init__(error, message)
        return error


class ConfigError(WaystationError):
    code = "config_error"

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config: {key}: {problem}")
        self.key = key
        self.problem = problem


class DatabaseError(WaystationError):
    code = "database_error"
    http_status = 503

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"database {path}: {problem}")
        self.path = path
        self.problem = problem


class DatabaseLocked(DatabaseError):
    code = "database_locked"


class DatabaseReadOnly(DatabaseError):
    code = "database_read_only"


class DatabaseCorrupt(DatabaseError):
    code = "database_corrupt"


class DatabaseTooNew(DatabaseError):
    code = "database_too_new"


class DatabaseForeign(DatabaseError):
    """A valid SQLite file with someone else's tables and no Waystation schema version."""

    code = "database_foreign"


class DiskFull(DatabaseError):
    code = "disk_full"
    http_status = 507


class InputError(WaystationError):
    code = "bad_request"
    http_status = 400


class MalformedRequest(InputError):
    code = "malformed_request"


class RequestTimeout(InputError):
    code = "request_timeout"
    http_status = 408


class BodyTooLarge(InputError):
    code = "body_too_large"
    http_status = 413


class UnknownTool(InputError):
    code = "unknown_tool"
    http_status = 422

    def __init__(self, tool: str, known: list[str]) -> None:
        super().__init__(f"unknown tool {tool!r}; known tools: {', '.join(sorted(known))}")
        self.tool = tool
        self.known = known


class InvalidArguments(InputError):
    code = "invalid_arguments"
    http_status = 422

    def __init__(self, tool: str, problem: str) -> None:
        super().__init__(f"{tool}: {problem}")
        self.tool = tool
        self.problem = problem


class WorkRefused(InputError):
    """Work from the fleet's hub that this host does not take: unsigned or signed by no trusted
    key, naming a secret or reaching a host `[fleet]` does not allow. Terminated, never retried."""

    code = "work_refused"
    http_status = 403


class NotFound(InputError):
    code = "not_found"
    http_status = 404

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"no {kind} with id {ident!r}")
        self.kind = kind
        self.ident = ident


class IdempotencyConflict(InputError):
    code = "idempotency_conflict"
    http_status = 409

    def __init__(self, key: str, task_id: str) -> None:
        super().__init__(f"idempotency key {key!r} already names task {task_id} with other arguments")
        self.key = key
        self.task_id = task_id


class InvalidTransition(InputError):
    code = "invalid_transition"
    http_status = 409

    def __init__(self, task_id: str, state: str, action: str) -> None:
        super().__init__(f"cannot {action} task {task_id}: it is {state}")
        self.task_id = task_id
        self.state = state
        self.action = action


class EmptyPrompt(InputError):
    code = "empty_prompt"

    def __init__(self) -> None:
        super().__init__("the prompt is empty; say what the turn should do")


class NoUrlToCall(InputError):
    """A call was demanded (required, or a named tool) but the conversation names no URL."""

    code = "no_url_to_call"

    def __init__(self, tool_choice: str) -> None:
        super().__init__(
            f"tool_choice {tool_choice} needs a URL to call, and the prompt names none; "
            "put the http(s) URL in the prompt, or list its host in [tools] allow_hosts"
        )
        self.tool_choice = tool_choice


class UnsupportedParameter(InputError):
    """A request parameter that would change the answer and that we cannot honour (`n` > 1, a
    schema the grammar cannot express): refused by name rather than silently ignored."""

    code = "unsupported_parameter"

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"{parameter}: {problem}")
        self.parameter = parameter
        self.problem = problem


class BadCheckpoint(InputError):
    """A checkpoint, proof or verifier key that is malformed or not signed by the key given (422)."""

    code = "bad_checkpoint"
    http_status = 422


class PromptTooLong(InputError):
    code = "prompt_too_long"

    def __init__(self, tokens: int, context: int, at_least: bool = False) -> None:
        size = f"at least {tokens}" if at_least else f"{tokens}"  # at least: counted from its characters
        super().__init__(f"the prompt is {size} tokens; the model's context holds {context}")
        self.tokens = tokens
        self.context = context
        self.at_least = at_least


class TooManyItems(InputError):
    """A list in a request longer than we take, as OpenAI refuses one (its code and limits:
    2,048 messages, 128 tools): refused before any of it is read further."""

    code = "array_above_max_length"

    def __init__(self, parameter: str, count: int, limit: int) -> None:
        super().__init__(f"{parameter}: array too long, {count} items; at most {limit}")
        self.parameter = parameter
        self.count = count
        self.limit = limit


class ModelError(WaystationError):
    code = "model_error"
    http_status = 422

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"model {path}: {problem}")
        self.path = path
        self.problem = problem


class UnknownModel(WaystationError):
    """A turn's `model`, or a name given to `models rm`, names no model: say where names come from."""

    code = "model_not_found"  # OpenAI's code for the same answer
    http_status = 404

    def __init__(self, name: str) -> None:
        super().__init__(
            f"no model named {name!r}; `waystation models ls` lists them, `waystation models pull` gets one"
        )
        self.name = name


class ModelConflict(WaystationError):
    code = "model_conflict"
    http_status = 409

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"model {name!r}: {problem}")
        self.name = name
        self.problem = problem


class PullFailed(WaystationError):
    """A download that did not complete: what arrived is kept, and the same pull resumes it."""

    code = "pull_failed"
    http_status = 502

    def __init__(self, source: str, problem: str, status: int | None = None) -> None:
        super().__init__(f"pull {source}: {problem}")
        self.source = source
        self.problem = problem
        self.status = status  # the HTTP status the server answered, if that was the problem


class PullNoSpace(PullFailed):
    """A download that would take the disk below the space kept free (or found it full): what
    arrived is deleted, so the database keeps room to work."""

    code = "pull_no_space"
    http_status = 507


class ChecksumMismatch(PullFailed):
    """The downloaded bytes are not the file the source vouches for: discarded, never installed."""

    code = "checksum_mismatch"
    http_status = 422

    def __init__(self, source: str, expected: str, actual: str) -> None:
        super().__init__(source, f"sha256 {actual} does not match the expected {expected}; discarded")
        self.expected = expected
        self.actual = actual


class ProviderError(WaystationError):
    """A provider route answered with a failure that may pass (429, 5xx): retry later."""

    code = "provider_error"
    http_status = 502

    def __init__(self, route: str, status: int, retry_after_s: float | None = None) -> None:
        hint = f"; retry after {retry_after_s:g} s" if retry_after_s is not None else "; retry later"
        super().__init__(f"route {route!r}: the provider answered HTTP {status}{hint}")
        self.route = route
        self.status = status
        self.retry_after_s = retry_after_s


class ProviderRejected(WaystationError):
    """The provider answered that the request itself is wrong (an unknown model, a bad body):
    retrying the same turn would fail the same way, so this is permanent, unlike ProviderError."""

    code = "provider_rejected"
    http_status = 502

    def __init__(self, route: str, status: int, detail: str) -> None:
        super().__init__(f"route {route!r}: the provider rejected the request (HTTP {status}): {detail}")
        self.route = route
        self.status = status
        self.detail = detail


class SeatRunFailed(WaystationError):
    """A seat CLI ended without an answer. The message has the exit code and never the CLI's
    output, which may quote its credential."""

    code = "seat_failed"
    http_status = 502

    def __init__(self, route: str, command: str, detail: str, returncode: int | None = None) -> None:
        super().__init__(
            f"route {route!r}: `{command}` {detail} (its output is not shown: it may hold credentials)"
        )
        self.route = route
        self.command = command
        self.detail = detail
        self.returncode = returncode


class TurnTimeout(WaystationError):
    code = "turn_timeout"
    http_status = 504

    def __init__(self, limit_s: float) -> None:
        super().__init__(f"the turn ran past its {limit_s:g} s limit")
        self.limit_s = limit_s


class TurnFailed(WaystationError):
    """A turn failed in a way no other error names (a bug): it still ends `error` with its
    receipt, so it is never left `running` for ever, and the answer says which turn."""

    code = "turn_failed"
    http_status = 500

    def __init__(self, turn_id: str, problem: str) -> None:
        super().__init__(f"turn {turn_id} failed: {problem}; it ended with an error receipt")
        self.turn_id = turn_id
        self.problem = problem


class ReplyCutOff(WaystationError):
    """The reply reached max_tokens inside a tool call: there is neither a call to make nor an
    answer to show (its JSON is never passed off as the answer)."""

    code = "reply_cut_off"
    http_status = 422

    def __init__(self, max_tokens: int) -> None:
        super().__init__(
            f"the model's reply was cut off at max_tokens ({max_tokens}) inside a tool call; raise max_tokens"
        )
        self.max_tokens = max_tokens


class AgentNotRunning(WaystationError):
    code = "agent_not_running"
    http_status = 503
    exit_code = 3

    def __init__(self, socket_path: object) -> None:
        super().__init__(
            f"the agent is not running (no answer on {socket_path}); start it with `waystation run`"
        )
        self.socket_path = socket_path


class RouteRefused(WaystationError):
    code = "route_refused"
    http_status = 409
    exit_code = 4

    def __init__(
        self,
        route: str,
        reason: str,
        *,
        provider: str = "",
        auth_lane: str = "none",
        cost_lane: str = "local",
    ) -> None:
        super().__init__(f"route {route!r} refused the turn: {reason}")
        self.route = route
        self.reason = reason
        # The lanes of the route that refused, so its `refused` receipt names them truthfully.
        self.provider = provider
        self.auth_lane = auth_lane
        self.cost_lane = cost_lane


class RouteOffline(RouteRefused):
    """The route needs the network and the host is offline: the same turn may run once it is back
    (a deferred turn waits for that instead of failing). Same code and exit code as any refusal."""

    OFFLINE = "offline: cloud routes need the network"

    @classmethod
    def of(cls, refusal: RouteRefused) -> RouteOffline:
        """The offline refusal of the route that gave `refusal` (its lanes kept)."""
        return cls(
            refusal.route,
            cls.OFFLINE,
            provider=refusal.provider,
            auth_lane=refusal.auth_lane,
            cost_lane=refusal.cost_lane,
        )


class ReceiptsDamaged(WaystationError):
    """The receipts' Merkle tree lacks what the receipts say it holds: rows were removed or edited
    behind the agent's back (500; `receipts verify` names what)."""

    code = "receipts_damaged"

    def __init__(self, problem: str) -> None:
        super().__init__(f"{problem}: the receipts were edited; `waystation receipts verify` names what")
        self.problem = problem


class SigningKeyUnusable(WaystationError):
    """The receipts' signing key file is there but is no key (truncated, overwritten, another
    format): checkpoints cannot be signed until it is restored or moved away (503)."""

    code = "signing_key_unusable"
    http_status = 503

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(
            f"{path} is not a usable signing key ({problem}): restore it from a backup, or move it "
            "away and a new key is made at the next signing (checkpoints the old key signed then "
            "verify only with its `receipts key`); until then checkpoints are not signed"
        )
        self.path = str(path)
        self.problem = problem


class DestinationRefused(WaystationError):
    """Never sent: the destination's address is not one this delivery may connect to. Not a
    DeliveryError: no later try can reach it either, so the task is dead at once."""

    code = "destination_refused"
    http_status = 403

    def __init__(self, host: str, address: str, kind: str, rule: str) -> None:
        where = host if host == address else f"{host} ({address})"
        super().__init__(f"refused: {where} is {kind}, not a public address; {rule}")
        self.host = host
        self.address = address
        self.kind = kind
        self.rule = rule


class DeliveryError(WaystationError):
    code = "delivery_error"
    http_status = 502


class NetworkUnreachable(DeliveryError):
    """No answer from the destination: retried without counting an attempt."""

    code = "network_unreachable"


class FleetError(WaystationError):
    """The fleet's hub (NATS JetStream) cannot be used: unreachable, or it refused."""

    code = "fleet_error"
    http_status = 503


class FleetUnavailable(FleetError):
    """The hub did not answer in time (down, or the link is cut): retried, never lost."""

    code = "fleet_unavailable"


class FleetRefused(FleetError):
    """The hub answered no: no JetStream, bad credentials, a permission it does not grant."""

    code = "fleet_refused"
