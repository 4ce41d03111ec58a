"""What a local model backend is: a Protocol, the records it exchanges, and the tool-call format.

Backends (llama.cpp, MLX, the scripted test double) differ in how they generate; the turn engine
only sees `ModelBackend.generate`. Messages are OpenAI-style dicts (`role`, `content`, ...), the
shape every chat template and the OpenAI-compatible endpoint already speak.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from waystation.contract import ToolChoiceMode

Message = dict[str, Any]
TokenSink = Callable[[str], None]
# Where a generation stands before its first token: ("waiting", generations ahead of it),
# ("loading", 0) while the model loads, ("generating", 0) once it runs.
StageSink = Callable[[str, int], None]
ToolChoice = ToolChoiceMode


def discard(piece: str) -> None:
    """A token sink for text nobody streams."""
    del piece


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the model is told about it."""

    name: str
    description: str
    parameters: Mapping[str, Any]  # JSON Schema of the arguments
    # A stricter schema a grammar-constrained model fills in instead (None: `parameters`), e.g.
    # a body only for methods that take one, bounded so a small model cannot ramble.
    grammar: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The OpenAI shape: arguments as a JSON string."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments)},
        }


@dataclass(frozen=True)
class GenerationRequest:
    messages: Sequence[Message]
    tools: Sequence[ToolSpec] = ()
    tool_choice: ToolChoice = "auto"
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = None  # the sampler's seed (None: a random one); greedy decoding ignores it
    # OpenAI's nucleus sampling, in (0, 1] (None: not asked; llama.cpp's 0.95, a provider's own).
    top_p: float | None = None
    # OpenAI's penalties, in [-2, 2] (0: none): a token's logit is lowered by frequency_penalty
    # for each time it came in the last 64 tokens (prompt included, as llama-server counts them)
    # and by presence_penalty once if it came at all.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    on_stage: StageSink | None = field(default=None, compare=False)
    # A JSON Schema the answer must match (OpenAI's response_format); None: free text.
    response_format: Mapping[str, Any] | None = None
    # Ollama's keep_alive, in seconds: how long the model stays loaded after this generation
    # (None: `[model] idle_unload_s`; 0: unloaded before the answer returns; negative: forever).
    # Backends with nothing to unload (providers, the scripted double) ignore it.
    keep_alive: float | None = None
    # OpenAI's `stop`: the answer ends before the first of these strings and never contains it
    # (a tool call's JSON is not cut: the strings are for the answer's text).
    stop: Sequence[str] = ()


@dataclass(frozen=True)
class Generation:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    cold_load_ms: int | None = None  # set when this generation paid for loading the model
    first_token_ms: int | None = None
    # What the provider says answered, which may differ from the model asked for (a route's
    # alias resolved, a fallback on their side); None where the backend is the model itself.
    model_answered: str | None = None
    # Provider telemetry such as rate-limit headers: shown as telemetry, never as the model.
    telemetry: dict[str, str] = field(default_factory=dict)


class ModelBackend(Protocol):
    name: str  # llamacpp | mlx | scripted
    model_path: str

    @property
    def loaded(self) -> bool: ...

    async def generate(self, request: GenerationRequest, on_token: TokenSink | None = None) -> Generation:
        """Generate one assistant message; stream text tokens to `on_token` as they come."""
        ...

    async def unload(self) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class KeepsState(Protocol):
    """A backend that can keep a parked turn's model state for its resumption (llama.cpp with
    `[model] parallel` and `saved_state_mb`; resume_state.py). Others do not offer it."""

    async def keep_for_resume(self, request: GenerationRequest) -> None:
        """The turn asked `request` and parked: keep what its answer will start with, in the
        background (it returns at once)."""
        ...


def tool_call_schema(
    tools: Sequence[ToolSpec], choice: ToolChoice, answer: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """JSON Schema of one assistant reply when tools are offered: a tool call, or (on "auto")
    a plain answer (text, or a value matching `answer`, a response format's schema).
    Constraining generation to it makes even a 135M model's calls parse."""
    calls = [
        {
            "type": "object",
            "properties": {"tool": {"const": t.name}, "arguments": dict(t.grammar or t.parameters)},
            "required": ["tool", "arguments"],
        }
        for t in tools
    ]
    value = dict(answer) if answer is not None else {"type": "string"}
    reply = {"type": "object", "properties": {"answer": value}, "required": ["answer"]}
    options = calls if choice == "required" else [*calls, reply]
    return options[0] if len(options) == 1 else {"anyOf": options}


def tool_instructions(tools: Sequence[ToolSpec], choice: ToolChoice) -> str:
    """The system text that tells a model without a tool template how to reply: short, since a
    small model pays for every token of it on every turn (the grammar holds the exact shape)."""
    answer = 'reply with JSON only: {"answer": "<your answer>"}.'
    if not tools:
        return "Using the tool results above, " + answer
    lines = ["Tools:"]
    for t in tools:
        arguments = ", ".join(dict(t.parameters.get("properties") or {}))
        lines.append(f"- {t.name}({arguments}): {t.description.split('. ')[0].rstrip('.')}.")
    lines.append('To call one, reply with JSON only: {"tool": "<name>", "arguments": {...}}.')
    if choice != "required":
        lines.append("To answer without a tool, " + answer)
    return "\n".join(lines)


def format_instructions(schema: Mapping[str, Any]) -> str:
    """The system text for an answer held to a JSON Schema (the grammar holds the exact shape;
    the names of its keys help a small model fill them with something sensible)."""
    keys = ", ".join(dict(schema.get("properties") or {}))
    return "Reply with JSON only" + (f": an object with {keys}." if keys else ".")


def parse_tool_reply(text: str, call_id: str, json_answer: bool = False) -> tuple[str, list[ToolCall]]:
    """Read a constrained reply: (answer text, tool calls). Unparseable text is the answer itself;
    an answer held to a response format's schema (`json_answer`) is that value's JSON."""
    try:
        reply = json.loads(text)
    except json.JSONDecodeError:
        return text, []
    if isinstance(reply, dict) and isinstance(reply.get("tool"), str):
        arguments = reply.get("arguments")
        return "", [ToolCall(call_id, reply["tool"], arguments if isinstance(arguments, dict) else {})]
    if isinstance(reply, dict) and json_answer and "answer" in reply:
        return json.dumps(reply["answer"]), []
    if isinstance(reply, dict) and isinstance(reply.get("answer"), str):
        return reply["answer"], []
    return text, []


URL_IN_TEXT = re.compile(r"https?://[^\s\"'<>()\[\]{}]+")


def urls_in(messages: list[Message]) -> list[str]:
    """The http(s) URLs written in the conversation, in order, without trailing punctuation."""
    found: dict[str, None] = {}
    for message in messages:
        for match in URL_IN_TEXT.findall(str(message.get("content") or "")):
            found[match.rstrip(".,;:!?")] = None
    return list(found)


def urls_to_call(messages: list[Message]) -> list[str]:
    """The URLs the user's messages name that no call in the conversation has used yet: what a
    next call may still be for (a URL already called has its answer in the conversation)."""
    called = {
        str(_call_arguments(call).get("url"))
        for message in messages
        for call in message.get("tool_calls") or []
    }
    return [url for url in urls_in([m for m in messages if m.get("role") == "user"]) if url not in called]


def _call_arguments(call: Mapping[str, Any]) -> Mapping[str, Any]:
    """An OpenAI-shaped call's arguments (a JSON string) as an object; {} when unreadable."""
    raw = (call.get("function") or {}).get("arguments")
    try:
        arguments = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {}
    return arguments if isinstance(arguments, Mapping) else {}
