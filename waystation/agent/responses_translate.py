"""OpenAI's Responses API (`POST /v1/responses`) translated to and from a chat completion: the one
engine answers both (api_openai.py).

A Responses body becomes a Chat Completions body (`input` items to `messages`, `instructions` to a
system message first, flat function `tools` to nested ones, `text.format` to `response_format`,
`max_output_tokens` to `max_completion_tokens`), which the chat request parser then checks as it
checks any chat request. The turn's result becomes a Response object (a `message` item with its
`output_text`, or one `function_call` item per call the model made to the client's tools), whole
or as the Responses stream's typed events. The client runs the calls and sends each result back
as a `function_call_output` item with the whole conversation, as the OpenAI SDK does with
`store=false`.

What a Responses request may ask for and Waystation cannot do is a 400 naming it: state kept
between requests (`previous_response_id`, `conversation`, `item_reference`, `background`),
built-in tools (web search, file search, code interpreter, ...), images and files as input.
A stream ends with `response.completed`; a reply cut off by `max_output_tokens` is its response
with `"status": "incomplete"` and `incomplete_details`, and a stream of one ends with
`response.incomplete`, as OpenAI's does (the Agents SDK raises on it; on `response.completed`
it took a cut-off reply as whole).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from waystation import sse
from waystation.errors import MalformedRequest, UnsupportedParameter, WaystationError
from waystation.station.turns.request import TurnResult

# Fields that need state kept between requests, or work Waystation does not do: refused unless
# they hold the value that asks for nothing.
REFUSED: dict[str, str] = {
    "previous_response_id": "responses are not kept; send the whole conversation as input",
    "conversation": "conversations are not kept; send the whole conversation as input",
    "background": "background responses are not supported",
    "prompt": "prompt templates are not supported",
    "include": "no extra output data is returned",
    "top_logprobs": "log probabilities are not returned",
}
# Fields passed on as they are: the chat parser checks them.
SAME = ("model", "temperature", "top_p", "stream", "store", "stop", "keep_alive")
ROLES = ("user", "system", "developer", "assistant")


def chat_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Chat Completions body a Responses body asks for, or a 400 naming what cannot be done."""
    for name, problem in REFUSED.items():
        if body.get(name) not in (None, False, "", [], {}):
            raise UnsupportedParameter(name, problem)
    if body.get("truncation") not in (None, "disabled"):
        raise UnsupportedParameter("truncation", 'only "disabled": a conversation too long is an error')
    chat: dict[str, Any] = {name: body[name] for name in SAME if name in body}
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise MalformedRequest("instructions must be a string")
    messages = ([{"role": "system", "content": instructions}] if instructions else []) + _messages(
        body.get("input")
    )
    chat["messages"] = messages
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    if body.get("tools") is not None:
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    text = body.get("text")
    if text is not None:
        if not isinstance(text, dict):
            raise MalformedRequest("text must be an object")
        if text.get("format") is not None:
            chat["response_format"] = _format(text["format"])
    return chat


def _messages(raw: Any) -> list[dict[str, Any]]:
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise MalformedRequest("input must be a string or a non-empty list of items")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            if item.get("role") not in ROLES:
                raise MalformedRequest(f"{where}.role must be one of {', '.join(ROLES)}")
            messages.append({"role": item["role"], "content": _text(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            call = _call(item, where)
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)  # calls made together are one assistant message
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise MalformedRequest(f"{where}.call_id must be a string: the id of the call it answers")
            output = _text(item.get("output"), f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        elif kind == "reasoning":
            continue  # a reasoning summary another model wrote: nothing a local model can read
        elif kind == "item_reference":
            raise UnsupportedParameter(f"{where}.type", "items are not kept; send the item itself")
        else:
            raise UnsupportedParameter(f"{where}.type", f"{kind!r} items are not supported")
    return messages


def _text(content: Any, where: str) -> str:
    """A message's text: a string, or a list of text parts (input_text, output_text) joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise MalformedRequest(f"{where} must be a string or a list of content parts")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text"):
            raise UnsupportedParameter(f"{where}[{j}].type", f"{kind!r} parts are not supported: text only")
        if not isinstance(part.get("text"), str):
            raise MalformedRequest(f"{where}[{j}].text must be a string")
        texts.append(part["text"])
    return "".join(texts)


def _call(item: dict[str, Any], where: str) -> dict[str, Any]:
    if not all(isinstance(item.get(k), str) for k in ("call_id", "name", "arguments")):
        raise MalformedRequest(f"{where} must be a function_call with call_id, name and arguments (strings)")
    return {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": item["arguments"]},
    }


def _tools(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise MalformedRequest('tools must be a list of {"type": "function", "name", ...} objects')
    tools = []
    for i, tool in enumerate(raw):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise UnsupportedParameter(f"tools[{i}].type", f"{kind!r}: only function tools are supported")
        function = {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(raw: Any) -> Any:
    if isinstance(raw, str):
        return raw  # auto, none, required: the same words
    if isinstance(raw, dict) and raw.get("type") == "function":
        return {"type": "function", "function": {"name": raw.get("name")}}
    kind = raw.get("type") if isinstance(raw, dict) else raw
    raise UnsupportedParameter("tool_choice", f"{kind!r}: only auto, none, required or a function")


def _format(raw: Any) -> dict[str, Any]:
    """`text.format` as Chat Completions' `response_format` (json_schema nests its fields)."""
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind != "json_schema":
        return {"type": kind}  # text and json_object as in chat; anything else the chat parser names
    spec = {k: raw[k] for k in ("name", "schema", "strict", "description") if k in raw}
    return {"type": "json_schema", "json_schema": spec}


# --- the answer -----------------------------------------------------------------------------------


class ResponseBuilder:
    """One response's fixed fields, and its answer whole or as the stream's typed events."""

    def __init__(self, body: Mapping[str, Any], model: str) -> None:
        self.id = "resp_" + secrets.token_hex(12)
        self.message_id = "msg_" + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = model
        self._echo = {
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "tool_choice": body.get("tool_choice") or "auto",
            "tools": body.get("tools") or [],
            "temperature": body.get("temperature"),
            "top_p": body.get("top_p"),
            "text": body.get("text") or {"format": {"type": "text"}},
            "metadata": body.get("metadata") or {},
            "store": bool(body.get("store")),
            "parallel_tool_calls": True,
        }
        self._sequence = 0
        self._text = ""  # what the stream has sent of the message so far
        self._message_open = False

    def response(self, result: TurnResult | None, status: str = "completed") -> dict[str, Any]:
        output: list[dict[str, Any]] = []
        incomplete = None
        if result is not None:
            calls = _calls(result)
            text = self._text if self._message_open else result.text
            if text and (self._message_open or not calls):
                output.append(self._message(text, "completed"))
            output.extend(calls)
            if result.finish_reason == "length" and not calls:
                status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        response: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": None,
            "incomplete_details": incomplete,
            "model": (result and (result.model_answered or result.model)) or self.model,
            "output": output,
            **self._echo,
        }
        if result is not None:
            p, c = result.usage.prompt_tokens, result.usage.completion_tokens
            response["usage"] = {
                "input_tokens": p,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": c,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": p + c,
            }
            response["waystation"] = {"turn_id": result.turn_id, "receipt_id": result.receipt_id}
        return response

    def _message(self, text: str, status: str) -> dict[str, Any]:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return {
            "type": "message",
            "id": self.message_id,
            "status": status,
            "role": "assistant",
            "content": [part],
        }

    # --- the stream ------------------------------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return sse.frame(data, kind)

    def head(self) -> bytes:
        started = self.response(None, "in_progress")
        return self.event("response.created", response=started) + self.event(
            "response.in_progress", response=started
        )

    def delta(self, piece: str) -> bytes:
        frames = b""
        if not self._message_open:
            self._message_open = True
            item = {**self._message("", "in_progress"), "content": []}
            frames += self.event("response.output_item.added", output_index=0, item=item)
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            frames += self.event("response.content_part.added", **self._where(), part=part)
        self._text += piece
        return frames + self.event("response.output_text.delta", **self._where(), delta=piece, logprobs=[])

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.message_id, "output_index": 0, "content_index": 0}

    def ending(self, result: TurnResult) -> bytes:
        """The message's closing events, each call's events, and `response.completed` (or
        `response.incomplete` when the reply was cut off)."""
        frames = b""
        index = 0
        if self._message_open:
            message = self._message(self._text, "completed")
            frames += self.event("response.output_text.done", **self._where(), text=self._text, logprobs=[])
            frames += self.event("response.content_part.done", **self._where(), part=message["content"][0])
            frames += self.event("response.output_item.done", output_index=0, item=message)
            index = 1
        for offset, call in enumerate(_calls(result)):
            at = {"item_id": call["id"], "output_index": index + offset}
            frames += self.event(
                "response.output_item.added",
                output_index=index + offset,
                item={**call, "arguments": "", "status": "in_progress"},
            )
            frames += self.event("response.function_call_arguments.delta", **at, delta=call["arguments"])
            frames += self.event(
                "response.function_call_arguments.done", **at, name=call["name"], arguments=call["arguments"]
            )
            frames += self.event("response.output_item.done", output_index=index + offset, item=call)
        response = self.response(result)
        return frames + self.event(f"response.{response['status']}", response=response)

    def failed(self, exc: WaystationError) -> bytes:
        response = self.response(None, "failed")
        response["error"] = exc.to_json()["error"]
        return self.event("response.failed", response=response)


def _calls(result: TurnResult) -> list[dict[str, Any]]:
    """The calls the model made to the client's tools, as function_call items."""
    return [
        {
            "type": "function_call",
            "id": "fc_" + c["id"],
            "call_id": c["id"],
            "name": c["tool"],
            "arguments": json.dumps(c["arguments"]),
            "status": "completed",
        }
        for c in result.tool_calls
        if c.get("status") == "client"
    ]
