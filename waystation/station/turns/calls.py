"""A turn's tool calls: which tools a model is offered, which of its calls may go out, one task
per distinct call, and results in a form a small model can answer from.

- `tool_choice` is OpenAI's: auto (default), none, required, or {"tool": NAME}. Under auto the
  network tools are offered only once the conversation (the user's messages or tool results)
  names an http(s) URL: a model asked "Say hello." is not handed a way to invent a request. An
  MCP server's tools (NAME__TOOL) are offered always: the user configured that server.
- A call to a URL the conversation does not name, on a host `[tools] allow_hosts` does not list,
  is refused with a tool result saying so: never sent, never parked. So is a model's write of
  anything but JSON the user gave (station/turns/writes.py).
- A call carries its reach (adapters/tools/reach.py): a URL the user named may be at any address,
  one only a tool result named must be at a public one (a page must not steer the model to the
  host's loopback, its LAN or a metadata address), and so must whatever either redirects to,
  unless `allow_hosts` lists the host. An address written in the URL is checked here (refused,
  never parked); a name, when the call connects.
- A call is identified by its tool and normalized arguments; the same call twice in one turn
  (a resumed model asking again) is one task with one idempotency key, never parked twice.
- A client's calls (a chat completion's tools) that its `tool` messages already answered are
  not asked for again: `answered_calls` and `is_repeat` say which those are.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from waystation.adapters.models.base import Message, ToolCall, ToolChoice, ToolSpec, urls_in
from waystation.adapters.tools import ToolRegistry
from waystation.adapters.tools.reach import (
    PUBLIC_ONLY,
    REACH,
    USER_NAMED,
    host_listed,
    public_only,
    refused_literal,
)
from waystation.errors import DestinationRefused, InvalidArguments, MalformedRequest, NoUrlToCall, UnknownTool
from waystation.ports import Connectivity, Deliver, Delivery, Outcome
from waystation.queue.policy import no_answer, poll_delay
from waystation.queue.tasks import NewTask
from waystation.receipts import chain
from waystation.station.turns.progress import Progress
from waystation.station.turns.results import result_for_model, result_summary
from waystation.station.turns.writes import as_the_user_wrote, write_refusal


def conversation_urls(messages: Sequence[Message]) -> list[str]:
    """The URLs a call may use: those in the user's messages and in tool results."""
    return urls_in([m for m in messages if m.get("role") in ("user", "tool")])


def offer(
    tools: ToolRegistry,
    choice: ToolChoice | Mapping[str, str],
    urls: Sequence[str],
    allow_hosts: Sequence[str],
    objects: Sequence[Mapping[str, Any]] = (),
    allow_writes: Sequence[str] = (),
) -> tuple[list[ToolSpec], ToolChoice]:
    """The tools to offer the model for one step, and how it must use them. `objects`: the JSON
    objects the user gave, what a write may carry (with `allow_writes`, see writes.py)."""
    if choice == "none":
        return [], "none"
    reachable = bool(urls) or bool(allow_hosts)
    writes = bool(objects) or bool(allow_writes)
    if isinstance(choice, Mapping):  # {"tool": NAME}: that tool, a call demanded
        tool = tools.get(choice["tool"])
        if tool.needs_network and not reachable and not getattr(tool, "offered_without_url", False):
            raise NoUrlToCall(json.dumps(dict(choice)))
        return [_spec(tool, writes)], "required"
    offered = [
        _spec(t, writes)
        for t in tools
        # With JSON to send, a tool that only reads is left out: asked to "POST the JSON {...}",
        # the 135M model picked web_fetch (a GET) over http_request on every port tried, and
        # http_request reads as well.
        if (reachable or not t.needs_network or getattr(t, "offered_without_url", False))
        and not (objects and getattr(t, "reads_only", False))
        and getattr(t, "offered_to_models", True)  # `mcp` is for tasks: a model calls NAME__TOOL
    ]
    if choice == "required" and not offered:
        raise NoUrlToCall("required")
    return offered, choice if offered else "none"


def offer_client(
    tools: Sequence[Mapping[str, Any]], choice: ToolChoice | Mapping[str, str]
) -> tuple[list[ToolSpec], ToolChoice]:
    """An OpenAI client's function tools for its chat completion, and how the model must use
    them: the same choices as ours, but nothing is called here (the client runs them)."""
    specs = [
        ToolSpec(t["name"], t.get("description") or "", t.get("parameters") or NO_PARAMETERS) for t in tools
    ]
    if choice == "none" or not specs:
        return [], "none"
    if isinstance(choice, Mapping):  # {"tool": NAME}: that function, a call demanded
        named = [s for s in specs if s.name == choice["tool"]]
        if not named:
            raise MalformedRequest(f"tool_choice names {choice['tool']!r}, which is not one of the tools")
        return named, "required"
    return specs, choice


NO_PARAMETERS = {"type": "object", "properties": {}}

CallKey = tuple[str, str]  # a call's function name, and its arguments as canonical JSON


def answered_calls(messages: Sequence[Message]) -> set[CallKey]:
    """The calls a client's conversation already holds results for: each assistant tool call
    that a later `tool` message answers (by its id)."""
    asked: dict[str, CallKey] = {}
    answered: set[CallKey] = set()
    for message in messages:
        if message.get("role") == "assistant":
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                asked[call.get("id")] = _call_key(str(function.get("name")), function.get("arguments"))
        elif message.get("role") == "tool" and message.get("tool_call_id") in asked:
            answered.add(asked[message["tool_call_id"]])
    return answered


def is_repeat(call: ToolCall, answered: set[CallKey]) -> bool:
    """Whether the call is one already answered: the same function, the same arguments as JSON."""
    return _call_key(call.name, call.arguments) in answered


def _call_key(name: str, arguments: Any) -> CallKey:
    if isinstance(arguments, str):  # as a client sends them back: JSON text ("" for none)
        with contextlib.suppress(ValueError):  # not JSON: equal only to the same text
            arguments = json.loads(arguments or "{}")
    return name, json.dumps(arguments, sort_keys=True)


def _spec(tool: Any, writes: bool) -> ToolSpec:
    """A tool as the model is told about it; `writes`: whether a write has JSON it may carry."""
    grammar = getattr(tool, "grammar_parameters", None)
    if not writes:
        grammar = getattr(tool, "grammar_parameters_without_json", grammar)
    return ToolSpec(tool.name, tool.description, tool.parameters, grammar)


def refusal(args: Mapping[str, Any], urls: Sequence[str], allow_hosts: Sequence[str]) -> str | None:
    """Why a call's URL may not be used (None when it may): it must be one the conversation
    named, or on an allowed host."""
    url = args.get("url")
    if not isinstance(url, str):
        return None
    wanted = _normalized(url)
    if any(_normalized(u) == wanted for u in urls) or host_listed(url, allow_hosts):
        return None
    return (
        f"refused: {url} is not a URL the conversation named (nor on [tools] allow_hosts); "
        "call only URLs the user gave"
    )


def user_urls(messages: Sequence[Message]) -> list[str]:
    """The URLs the user's own messages name (not a tool result's)."""
    return urls_in([m for m in messages if m.get("role") == "user"])


def reach_of(url: str, users: Sequence[str]) -> str:
    """A call's reach: user-named when the user's messages name this very URL, else public."""
    wanted = _normalized(url)
    return USER_NAMED if any(_normalized(u) == wanted for u in users) else PUBLIC_ONLY


def with_reach(args: Mapping[str, Any], users: Sequence[str], allow_hosts: Sequence[str]) -> dict[str, Any]:
    """The call's args with its reach, or raise DestinationRefused for an address in its URL that
    the reach does not allow (checked again, with the names resolved, when it connects)."""
    url = args.get("url")
    if not isinstance(url, str):
        return dict(args)
    reach = reach_of(url, users)
    refused = refused_literal(httpx.URL(url)) if public_only(reach, url, allow_hosts) else None
    if refused is not None:
        raise refused
    return {**args, REACH: reach}


def _normalized(url: str) -> str:
    """A URL as compared with the conversation's: scheme and host in lower case (they ignore
    case), the path and query as written (`%3F` stays `%3F`, and `/A` is not `/a`)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return url
    port = "" if parsed.port is None else f":{parsed.port}"
    path = parsed.raw_path.decode("ascii", errors="replace") or "/"
    return f"{parsed.scheme.lower()}://{parsed.host.lower()}{port}{path}".rstrip("/")


def call_key(turn_id: str, tool: str, args: Mapping[str, Any]) -> str:
    """The idempotency key of a call: the turn and what is called, so the same call in the same
    turn is the same task however often the model asks."""
    digest = hashlib.sha256(json.dumps([tool, args], sort_keys=True).encode()).hexdigest()[:16]
    return f"{turn_id}-{digest}"


class Caller:
    """Makes a model's calls: validated, refused when the URL was never named or the write is
    not the user's, the same call answered from its first result, delivered at once while online,
    else parked as a task."""

    def __init__(
        self,
        tools: ToolRegistry,
        connectivity: Connectivity,
        deliver: Deliver,
        allow_hosts: Sequence[str],
        allow_writes: Sequence[str] = (),
    ) -> None:
        self._tools = tools
        self._connectivity = connectivity
        self._deliver = deliver
        self._allow_hosts = allow_hosts
        self._allow_writes = allow_writes

    async def call(
        self,
        turn_id: str,
        progress: Progress,
        call_id: str,
        name: str,
        arguments: dict[str, Any],
        urls: Sequence[str],
        objects: Sequence[Mapping[str, Any]],
    ) -> bool:
        """Make one call (or refuse it, or park it); whether it repeated an earlier one. `urls`
        and `objects`: what the conversation gave that a call may use (its URLs, the user's
        JSON objects)."""
        record: dict[str, Any] = {"id": call_id, "tool": name, "arguments": arguments}
        progress.tool_calls.append(record)
        message: Message = {"role": "tool", "tool_call_id": call_id}
        progress.messages.append(message)
        try:
            tool = self._tools.get(name)
            args = as_the_user_wrote(tool.validate(arguments), objects)
        except (UnknownTool, InvalidArguments) as exc:
            record["status"] = "error"
            message["content"] = json.dumps({"error": exc.message})
            return False
        # An MCP server's NAME__TOOL is queued as the tool `mcp` (adapters/mcp/tools.py).
        queued_as: str = getattr(tool, "queued_as", tool.name)
        key = call_key(turn_id, queued_as, args)
        earlier = next((m for m in progress.messages[:-1] if m.get("waystation_key") == key), None)
        if earlier is not None:  # the same call again: the same result, never a second task
            record["status"] = "repeated"
            record["task_id"] = earlier.get("waystation_task_id")
            message["content"] = earlier["content"]
            return True
        message["waystation_key"] = key
        why_not = refusal(args, urls, self._allow_hosts) or write_refusal(args, objects, self._allow_writes)
        try:
            args = with_reach(args, user_urls(progress.messages), self._allow_hosts)
        except DestinationRefused as exc:
            why_not = why_not or exc.message
        if why_not is not None:
            record["status"] = "refused"
            message["content"] = json.dumps({"error": why_not})
            return False
        unreachable: str | None = None
        taken: Delivery | None = None  # the destination took the call as a task of its own
        if self._connectivity.state == "online" or not tool.needs_network:  # a local tool: at once
            sent = await self._deliver(queued_as, args, key)
            if sent.outcome == Outcome.UNREACHABLE and tool.needs_network:
                self._connectivity.report_network_error()  # then park it, retried until it answers
                unreachable = no_answer(sent.error)
            elif sent.outcome == Outcome.WAITING:  # parked on the server's task: polled till it ends
                taken = sent
            else:
                record["status"] = "done" if sent.result is not None else "error"
                record["result_status"] = sent.status
                record["result_summary"] = result_summary(sent.result, sent.error)
                message["content"] = result_for_model(sent.result, sent.error)
                return False
        task_id = chain.new_id("t")
        progress.parked.append(
            NewTask(
                tool=queued_as,
                args=args,
                host=tool.destination_host(args),
                idempotency_key=key,
                turn_id=turn_id,
                task_id=task_id,
                net_failures=0 if unreachable is None else 1,
                last_error=unreachable if taken is None else taken.error,
                remote_task=None if taken is None else taken.remote_task,
                first_poll_in_s=0.0 if taken is None else poll_delay(taken.retry_after_s),
            )
        )
        progress.deferred[task_id] = call_id
        record.update(status="deferred", task_id=task_id)
        message["waystation_task_id"] = task_id
        why = "offline: queued, delivered when back online"
        if unreachable is not None:
            why = f"{unreachable}: queued, delivered when it answers"
        if taken is not None:
            why = f"{taken.error}: the server runs it as a task; its result comes when it ends"
        message["content"] = json.dumps({"status": "deferred", "task_id": task_id, "message": why})
        return False
