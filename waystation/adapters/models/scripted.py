"""A scripted test double: replays a given sequence of replies, for fast, deterministic engine tests.

It speaks the same Protocol as the real backends and records every request it was given, so a
test can assert what the engine told the model (e.g. that a parked call was reported deferred).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from waystation.adapters.models.base import Generation, GenerationRequest, TokenSink, ToolCall, discard
from waystation.adapters.models.stop import StopStream


class ScriptedBackend:
    name = "scripted"

    def __init__(self, replies: Iterable[Generation | str | ToolCall], model_path: str = "scripted") -> None:
        self.model_path = model_path
        self._replies = list(replies)
        self.requests: list[GenerationRequest] = []
        self.kept: list[GenerationRequest] = []  # what parked turns asked it to keep (KeepsState)
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    async def generate(self, request: GenerationRequest, on_token: TokenSink | None = None) -> Generation:
        if not self._replies:
            raise AssertionError("the scripted model ran out of replies")
        self.requests.append(request)
        cold = None if self._loaded else 0
        self._loaded = True
        reply = self._replies.pop(0)
        if isinstance(reply, str):
            reply = Generation(text=reply)
        elif isinstance(reply, ToolCall):
            reply = Generation(text="", tool_calls=[reply], finish_reason="tool_calls")
        # Streamed word by word, and held to the request's stop strings as a real model is.
        stream = StopStream(request.stop, on_token or discard)
        for word in re.split(r"(?<=\S)(?=\s)", reply.text):
            stream.feed(word)
            if stream.stopped:
                break
        text = stream.finish()
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in request.messages)
        return Generation(
            text=text,
            tool_calls=reply.tool_calls,
            prompt_tokens=reply.prompt_tokens or prompt_tokens,
            completion_tokens=reply.completion_tokens or len(text.split()) + len(reply.tool_calls),
            finish_reason="stop" if stream.stopped else reply.finish_reason,
            cold_load_ms=cold,
        )

    async def keep_for_resume(self, request: GenerationRequest) -> None:
        self.kept.append(request)

    async def unload(self) -> None:
        self._loaded = False

    async def close(self) -> None:
        self._loaded = False
