"""Turns (POST /v1/turns and what GET /v1/turns/ID shows) and the OpenAI-compatible endpoint's objects."""

# No `from __future__ import annotations` here: TypedDict reads NotRequired from evaluated
# annotations (under 3.11 a string annotation counts every key as required).
from typing import Literal, NotRequired, TypedDict

from waystation.contract.tasks import Usage
from waystation.contract.vocabularies import JSON, ChatRole, ReceiptStatus, ToolChoiceMode, TurnState

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
    top_p: NotRequired[float]
    frequency_penalty: NotRequired[float]
    presence_penalty: NotRequired[float]
    seed: NotRequired[int]
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
