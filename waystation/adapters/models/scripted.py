"""A scripted test double: replays a given sequence of replies, for fast, deterministic engine tests.

It speaks the same Protocol as the real backends and records every request it was given, so a
test can assert what the engine told the model (e.g. that a parked call was reported deferred).
"""

from __future__ import annotations

from collections.abc import Iterable

from waystation.adapters.models.base import Generation, GenerationRequest, TokenSink, ToolCall


class ScriptedBackend:
    name = "scripted"

    def __init__(self, replies: Iterable[Generation | str | ToolCall], model_path: str = "scripted") -> None:
        self.model_path = model_path
        self._replies = list(replies)
        self.requests: list[GenerationRequest] = []
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
        words = reply.text.split(" ")
        for i, word in enumerate(words):
            if on_token is not None and word:
                on_token(word if i == 0 else " " + word)
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in request.messages)
        return Generation(
            text=reply.text,
            tool_calls=reply.tool_calls,
            prompt_tokens=reply.prompt_tokens or prompt_tokens,
            completion_tokens=reply.completion_tokens or len(reply.text.split()) + len(reply.tool_calls),
            finish_reason=reply.finish_reason,
            cold_load_ms=cold,
        )

    async def unload(self) -> None:
        self._loaded = False

    async def close(self) -> None:
        self._loaded = False
