"""MCP servers' tools as Waystation tools.

- `mcp` (McpCallTool): a call of one server's tool, args `{"server", "tool", "arguments"}`: what a
  task holds (`POST /v1/tasks` takes the same) and what the flusher delivers, as a `tools/call`
  carrying `Idempotency-Key: <task key>`. A remote server's headers are resolved at delivery
  (a value may be `{"secret": NAME}`). A server may take the call as a task of its own: the
  answer is then a DeliveryResult with `remote_task` (the queue keeps the task running and
  polls it), `resume` asks after that task, `cancel_remote` cancels it (remote_tasks.py).
- `NAME__TOOL` (ServerTool): one listed tool as a model is offered it, with the server's input
  schema; a call of it becomes an `mcp` call (`queued_as`). A stdio server's tools are local
  (`needs_network` false: called at once, also offline); a remote server's are network tools,
  offered without a URL in the conversation (the server is the user's own configuration).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from waystation.adapters.mcp.remote_tasks import RemoteTask, ask_after, cancel, task_state
from waystation.adapters.mcp.session import ListedTool, McpRefused, call_tool
from waystation.adapters.tools.base import MAX_RESULT_BYTES, DeliveryResult
from waystation.adapters.tools.client import DeliveryClient
from waystation.adapters.tools.secret_refs import Secrets, resolved
from waystation.config import McpServerSettings
from waystation.config_mcp import TOOL_SEPARATOR
from waystation.errors import InvalidArguments

log = structlog.get_logger(__name__)

MCP_TOOL = "mcp"


@dataclass(frozen=True)
class McpCallResult(DeliveryResult):
    """A `tools/call` result: the body is its text content (what a model reads), and the task's
    result holds the call's own `content`, `structuredContent` and `isError` too."""

    call: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, object]:
        data = super().to_json()
        if self.call is not None:
            data.update(
                content=self.call.get("content", []),
                structuredContent=self.call.get("structuredContent"),
                isError=bool(self.call.get("isError", False)),
            )
        return data


class McpCallTool:
    name = MCP_TOOL
    description = "Call a tool of a configured MCP server: {server, tool, arguments}."
    needs_network = True
    offered_to_models = False  # a model is offered each server's tools as NAME__TOOL instead
    parameters: dict[str, object] = {
        "type": "object",
        "properties": {
            "server": {"type": "string"},
            "tool": {"type": "string"},
            "arguments": {"type": "object"},
        },
        "required": ["server", "tool"],
    }

    def __init__(self, servers: Mapping[str, McpServerSettings], secrets: Secrets | None) -> None:
        self.servers = {name: s for name, s in servers.items() if s.enabled}
        self._secrets = secrets
        # Told the name of a server that sent `notifications/tools/list_changed` during one of
        # our sessions (the catalog lists it anew); None: nobody listens.
        self.list_changed: Callable[[str], None] | None = None

    def validate(self, args: object, *, allow_secrets: bool = False) -> dict[str, Any]:
        if not isinstance(args, Mapping) or not set(args) <= {"server", "tool", "arguments"}:
            raise InvalidArguments(self.name, 'args are {"server", "tool", "arguments"}')
        server, tool, arguments = args.get("server"), args.get("tool"), args.get("arguments", {})
        if not isinstance(server, str) or server not in self.servers:
            known = ", ".join(self.servers) or "none configured"
            raise InvalidArguments(
                self.name, f"server {server!r} is not an enabled [mcp.servers] entry ({known})"
            )
        if not isinstance(tool, str) or not tool:
            raise InvalidArguments(self.name, "tool must be the name of one of the server's tools")
        if not isinstance(arguments, Mapping):
            raise InvalidArguments(self.name, "arguments must be an object")
        return {"server": server, "tool": tool, "arguments": dict(arguments)}

    def destination_host(self, args: Mapping[str, Any]) -> str:
        server = self.servers.get(args["server"])
        if server is not None and server.url:
            url = httpx.URL(server.url)
            return url.host if url.port is None else f"{url.host}:{url.port}"
        return f"mcp-{args['server']}"  # a local process: its own lane

    def headers(self, server: McpServerSettings) -> dict[str, str]:
        """The server's headers as sent: secrets resolved now (an unset one: InvalidArguments)."""
        return resolved(self.name, server.headers, self._secrets)

    async def deliver(
        self, client: DeliveryClient, args: Mapping[str, Any], idempotency_key: str, timeout_s: float
    ) -> DeliveryResult:
        name = args["server"]
        server, headers = self._server(name, idempotency_key)
        started = time.monotonic()
        try:
            answer = await call_tool(
                name, server, args["tool"], args["arguments"], headers, timeout_s, self._changed(name)
            )
        except McpRefused as exc:  # a JSON-RPC error: no later attempt answers otherwise
            return _refused(exc.code, exc.message, started)
        if "task" in answer:  # the server took the call as a task of its own: asked after later
            try:
                state = task_state(answer["task"])
            except McpRefused as exc:
                return _refused(exc.code, exc.message, started)
            return _waiting(str(answer["task"]["taskId"]), state, started)
        return _result(200, _text(answer), started, answer)

    async def resume(
        self,
        client: DeliveryClient,
        args: Mapping[str, Any],
        idempotency_key: str,
        remote_task: str,
        timeout_s: float,
    ) -> DeliveryResult:
        """Ask after the server's task for this call: still at it, or how it ended."""
        name = args["server"]
        server, headers = self._server(name, idempotency_key)
        started = time.monotonic()
        try:
            state = await ask_after(name, server, remote_task, headers, timeout_s, self._changed(name))
        except McpRefused as exc:  # no such task (any more), or a malformed answer
            return _refused(exc.code, exc.message, started)
        if state.result is not None:
            return _result(200, _text(state.result), started, state.result)
        if state.status == "cancelled":
            return _refused(-32800, f"the MCP server cancelled its task {remote_task}", started)
        if state.status == "input_required":  # Waystation has no one to ask: it cannot go on
            return _refused(-32600, f"the MCP server's task {remote_task} asks for input", started)
        return _waiting(remote_task, state, started)

    async def cancel_remote(self, args: Mapping[str, Any], remote_task: str, timeout_s: float) -> None:
        name = args["server"]
        server, headers = self._server(name, None)
        try:
            await cancel(name, server, remote_task, headers, timeout_s)
        except McpRefused as exc:  # e.g. it had ended already: nothing is left to stop
            log.info("the MCP server refused tasks/cancel", server=name, error=str(exc)[:300])

    def _server(self, name: str, idempotency_key: str | None) -> tuple[McpServerSettings, dict[str, str]]:
        server = self.servers.get(name)
        if server is None:
            raise InvalidArguments(self.name, f"server {name!r} is no longer configured")
        if not server.url:
            return server, {}
        key = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return server, {**self.headers(server), **key}

    def _changed(self, server: str) -> Callable[[], None] | None:
        told = self.list_changed
        return None if told is None else lambda: told(server)


def _refused(code: int, message: str, started: float) -> McpCallResult:
    return _result(400, json.dumps({"error": {"code": code, "message": message}}), started, None)


def _waiting(remote_task: str, state: RemoteTask, started: float) -> McpCallResult:
    shown = f"MCP task {remote_task}: {state.status}" + (f" ({state.message})" if state.message else "")
    return McpCallResult(
        status=202,
        headers={"content-type": "text/plain"},
        body=shown,
        truncated=False,
        retry_after_s=state.poll_s,
        duration_ms=int((time.monotonic() - started) * 1000),
        remote_task=remote_task,
    )


def _text(answer: Mapping[str, Any]) -> str:
    """What a model reads of a result: its text content, else its structured content as JSON."""
    texts = [str(c.get("text", "")) for c in answer.get("content") or [] if c.get("type") == "text"]
    if not texts and answer.get("structuredContent") is not None:
        texts = [json.dumps(answer["structuredContent"])]
    text = "\n".join(texts) or json.dumps(answer.get("content") or [])
    return f"error: {text}" if answer.get("isError") else text


def _result(status: int, body: str, started: float, call: Mapping[str, Any] | None) -> McpCallResult:
    encoded = body.encode()
    truncated = len(encoded) > MAX_RESULT_BYTES
    if truncated:
        body = encoded[:MAX_RESULT_BYTES].decode(errors="ignore")
    if call is not None and len(json.dumps(call).encode()) > MAX_RESULT_BYTES:
        # The call's own content is kept as capped as the body: as its text, cut to the cap.
        call = {"content": [{"type": "text", "text": body}], "isError": bool(call.get("isError"))}
        truncated = True
    return McpCallResult(
        status=status,
        headers={"content-type": "text/plain"},
        body=body,
        truncated=truncated,
        retry_after_s=None,
        duration_ms=int((time.monotonic() - started) * 1000),
        call=call,
    )


class ServerTool:
    """One server's tool as a model is offered it (NAME__TOOL); its calls are `mcp` calls."""

    queued_as = MCP_TOOL
    offered_without_url = True

    def __init__(self, server: str, remote: bool, listed: ListedTool, calls: McpCallTool) -> None:
        self.server = server
        self.tool = listed.name
        self.name = f"{server}{TOOL_SEPARATOR}{listed.name}"
        self.description = listed.description or f"{listed.name} (MCP server {server})"
        self.parameters: dict[str, object] = listed.input_schema or {"type": "object", "properties": {}}
        self.needs_network = remote
        self._calls = calls

    def validate(self, args: object, *, allow_secrets: bool = False) -> dict[str, Any]:
        if not isinstance(args, Mapping):
            raise InvalidArguments(self.name, "arguments must be an object")
        return self._calls.validate({"server": self.server, "tool": self.tool, "arguments": dict(args)})

    def destination_host(self, args: Mapping[str, Any]) -> str:
        return self._calls.destination_host(args)

    async def deliver(
        self, client: DeliveryClient, args: Mapping[str, Any], idempotency_key: str, timeout_s: float
    ) -> DeliveryResult:
        return await self._calls.deliver(client, args, idempotency_key, timeout_s)
