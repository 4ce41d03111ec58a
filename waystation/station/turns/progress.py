"""What one run (or resumption) of a turn has done so far: the engine's working state, written to
the turn's row when the run stops."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from waystation.adapters.models.base import Message, StageSink
from waystation.queue.tasks import NewTask


@dataclass
class Progress:
    messages: list[Message]
    resumed: bool = False
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cold_load_ms: int | None = None
    model_answered: str | None = None
    telemetry: dict[str, str] = field(default_factory=dict)
    text: str = ""
    reason: str | None = None  # said with an answer that is not the whole story (the step limit)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # every call the turn made
    parked: list[NewTask] = field(default_factory=list)
    deferred: dict[str, str] = field(default_factory=dict)  # task id -> tool call id
    on_stage: StageSink | None = None  # told when the model is busy, loading, then generating
    finish_reason: str = "stop"  # the last generation's
