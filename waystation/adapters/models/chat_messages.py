"""Messages as a chat template takes them, and the form a local model is asked to answer in.

Chat templates expect text content, and a model without a tool template is told what to do in its
system message. The answer after tool results is asked for in one form (grounding.py rewrites the
last exchange, `answer_form` adds a response format's instructions); the prefix a parked turn
keeps for its resumption (resume_state.py) is rendered from the same function, so it is exactly
what the resumed prompt starts with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from waystation.adapters.models.base import Message, format_instructions


def answer_form(messages: Sequence[Message], response_format: Mapping[str, Any] | None) -> list[Message]:
    """A step that offers no tool: the messages in text, a response format's instructions in the
    system message."""
    plain_messages = [plain(m) for m in messages]
    if response_format is None:
        return plain_messages
    return with_system(plain_messages, format_instructions(response_format))


def plain(message: Message) -> Message:
    """Chat templates expect text content; give tool calls and results a textual form."""
    content = message.get("content")
    if message.get("tool_calls") and not content:
        calls = [
            {"tool": c["function"]["name"], "arguments": _arguments(c["function"].get("arguments"))}
            for c in message["tool_calls"]
        ]
        content = json.dumps(calls[0] if len(calls) == 1 else calls)
    return {"role": message["role"], "content": content if isinstance(content, str) else json.dumps(content)}


def with_system(messages: list[Message], text: str) -> list[Message]:
    """`text` added to the system message (one made when there is none)."""
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _arguments(raw: Any) -> Any:
    """A call's arguments as sent back by a client: a JSON string, kept as text if it is not."""
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return raw
