"""What a turn is asked to do (TurnRequest) and what it came to (TurnResult): frozen records with
explicit JSON, shared by the engine, the operations and the socket API."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from waystation import contract
from waystation.adapters.models.base import Message, ToolChoice
from waystation.errors import MalformedRequest
from waystation.receipts.chain import Usage

MAX_STEPS = 4
MAX_TOKENS_LIMIT = 8192
TURN_ID_HEADER = "Waystation-Turn-Id"  # names the turn a POST /v1/turns answer is about
DEFERRED_TURN_TOOL = "turn"  # the task a whole deferred turn becomes (station/delivery.py runs it)


@dataclass(frozen=True)
class TurnRequest:
    prompt: str
    route: str | None = None
    model: str | None = None
    system: str | None = None
    max_tokens: int = 256
    tool_choice: ToolChoice | dict[str, str] = "auto"
    max_steps: int = MAX_STEPS
    messages: list[Message] | None = None  # a whole conversation (OpenAI-style) instead of prompt
    temperature: float = 0.0  # greedy by default
    # OpenAI's `seed`: a sampled answer (temperature > 0) is the same again for the same seed,
    # model and settings (None: a seed of its own each time).
    seed: int | None = None
    # OpenAI's top_p and penalties (adapters/models/base.py GenerationRequest has what they do).
    top_p: float | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    defer: bool = False  # offline on a cloud route: park the whole turn until the network is back
    # An OpenAI client's own function tools ({"name", "description", "parameters"}): offered
    # instead of ours, and the model's calls to them end the turn, returned for the client to run.
    client_tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None  # a JSON Schema the answer must match
    # Ollama's keep_alive in seconds: how long a local model stays loaded after the turn's
    # generations (None: `[model] idle_unload_s`; 0: unload at once; negative: forever).
    keep_alive: float | None = None
    stop: list[str] | None = None  # OpenAI's stop sequences: the answer ends before the first
    # Keep the conversation once the turn finished, until `retention_days` (records.py): a turn
    # is a resource you come back to; a chat completion only asks for it with OpenAI's `store`.
    store: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TurnResult:
    turn_id: str
    text: str
    route: str
    receipt_id: str
    status: contract.ReceiptStatus
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    deferred_task_ids: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    model: str | None = None  # the model asked for
    model_answered: str | None = None  # the model the provider says answered
    finish_reason: str = "stop"  # the last generation's: stop, length, tool_calls

    def to_json(self) -> contract.TurnResult:
        usage: contract.Usage = {
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
        }
        return {
            "turn_id": self.turn_id,
            "text": self.text,
            "route": self.route,
            "receipt_id": self.receipt_id,
            "status": self.status,
            "tool_calls": copy.deepcopy(self.tool_calls),  # as dataclasses.asdict gave them: a copy
            "deferred_task_ids": list(self.deferred_task_ids),
            "usage": usage,
            "model": self.model,
            "model_answered": self.model_answered,
            "finish_reason": self.finish_reason,
        }


def turn_request(body: Mapping[str, Any]) -> TurnRequest:
    """A turn as `POST /v1/turns` (and `waystation turn`) asks for it, or MalformedRequest."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise MalformedRequest("prompt must be a string")
    for name in ("route", "model", "system"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise MalformedRequest(f"{name} must be a string")
    if not isinstance(body.get("defer", False), bool):
        raise MalformedRequest("defer must be true or false")
    choice = tool_choice(body.get("tool_choice", "auto"))
    return TurnRequest(
        prompt=prompt,
        route=body.get("route"),
        model=body.get("model"),
        system=body.get("system"),
        max_tokens=bounded_int(body, "max_tokens", 256, MAX_TOKENS_LIMIT),
        tool_choice=choice,
        max_steps=bounded_int(body, "max_steps", MAX_STEPS, 16),
        defer=bool(body.get("defer", False)),
        keep_alive=keep_alive(body.get("keep_alive")),
    )


KEEP_ALIVE_MAX_S = 10 * 365 * 86400  # beyond any uptime; a longer one is a typo, or "forever" (-1)
# Go's time.ParseDuration, as Ollama reads keep_alive: numbers with units, longest unit names first
# so "ms" is not "m" + "s". Stricter than Go in two ways, both typos rather than intents: a unit
# given twice ("5m5m", 10m in Go) and a negative zero ("-0": neither "unload" nor "forever").
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_UNIT_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
KEEP_ALIVE_PROBLEM = (
    'keep_alive must be a number of seconds or a duration such as "30s", "5m", "1h30m" '
    f"(0: unload at once, negative: keep loaded; at most {KEEP_ALIVE_MAX_S // 3600}h)"
)


def keep_alive(value: Any) -> float | None:
    """Ollama's keep_alive in seconds: a number of seconds, or a Go duration ("5m", "1h30m",
    "-1s"; a bare number reads as seconds too); any negative value is -1 (forever). A negative
    zero ("-0", "-0s", -0.0) is refused: 0 unloads at once, -1 keeps loaded."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise MalformedRequest(KEEP_ALIVE_PROBLEM)
    seconds = value if not isinstance(value, str) else _duration(value.strip())
    if seconds is None or not -math.inf < seconds <= KEEP_ALIVE_MAX_S:  # no NaN, no ±inf
        raise MalformedRequest(KEEP_ALIVE_PROBLEM)
    if seconds == 0 and math.copysign(1.0, seconds) < 0:
        raise MalformedRequest(
            f"keep_alive {value!r} is a negative zero: say 0 to unload at once, -1 to keep loaded"
        )
    return -1.0 if seconds < 0 else float(seconds)


def _duration(text: str) -> float | None:
    sign = -1.0 if text.startswith("-") else 1.0
    text = text[1:] if text[:1] in ("-", "+") else text  # one sign, as Go takes
    try:
        return sign * float(text) if text and text[-1].isdigit() else _units(text, sign)
    except ValueError:
        return None


def _units(text: str, sign: float) -> float | None:
    total, at, units = 0.0, 0, set()
    while at < len(text):
        part = _DURATION_PART.match(text, at)
        if part is None or part[2] in units:
            return None
        units.add(part[2])
        total += float(part[1]) * _UNIT_S[part[2]]
        at = part.end()
    return sign * total if text else None


def tool_choice(value: Any) -> ToolChoice | dict[str, str]:
    """auto, none, required, or {"tool": NAME} (OpenAI's {"type": "function", "function":
    {"name": NAME}} reads the same)."""
    if value is None:
        return "auto"
    if value in ("auto", "required", "none"):
        return value  # type: ignore[no-any-return]
    if isinstance(value, dict):
        function = value.get("function")
        name = value.get("tool") or (function.get("name") if isinstance(function, dict) else None)
        if isinstance(name, str) and name:
            return {"tool": name}
    raise MalformedRequest('tool_choice must be one of auto, required, none, or {"tool": NAME}')


def bounded_int(body: Mapping[str, Any], name: str, default: int, maximum: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedRequest(f"{name} must be an integer between 1 and {maximum}")
    if value < 1:  # OpenAI's answer to max_tokens 0
        raise MalformedRequest(f"{name} must be at least 1, not {value}")
    if value > maximum:
        raise MalformedRequest(f"{name} must be at most {maximum}, not {value}")
    return value
