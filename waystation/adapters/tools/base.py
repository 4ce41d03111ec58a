"""What a network tool is: the Tool protocol, its delivery result, and the registry of tools."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx

from waystation.adapters.tools.client import DeliveryClient
from waystation.errors import UnknownTool

# A delivery's result is stored in the task row, served by the API and handed back to the model as
# a tool result. Capping it keeps one chatty destination from bloating the database, the process's
# memory and the model's context window; reading stops there, so a huge (or endless) body costs
# no more than this.
MAX_RESULT_BYTES = 64 * 1024

# Response headers worth keeping: enough to act on the answer (retry, follow, cache). Everything
# else is dropped, which is what keeps cookies and auth challenges out of tasks and receipts.
KEPT_RESPONSE_HEADERS = ("content-type", "retry-after", "location", "etag")


@dataclass(frozen=True)
class DeliveryResult:
    """The destination's answer to one delivery (any status: classifying it is the queue's job)."""

    status: int
    headers: dict[str, str]
    body: str
    truncated: bool
    retry_after_s: float | None
    duration_ms: int
    # The destination took the call as a task of its own and is still at it (an MCP server's
    # task): its id, to ask after it (Resumable.resume) in retry_after_s; the body says how it is.
    remote_task: str | None = field(default=None, kw_only=True)

    def to_json(self) -> dict[str, object]:
        return {
            "status": self.status,
            "headers": dict(self.headers),
            "body": self.body,
            "truncated": self.truncated,
            "retry_after_s": self.retry_after_s,
            "duration_ms": self.duration_ms,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> DeliveryResult:
        # Strict on purpose: a stored result that does not look like one is a bug to surface,
        # not something to paper over with defaults.
        status, headers, body = data.get("status"), data.get("headers"), data.get("body")
        truncated, retry_after = data.get("truncated"), data.get("retry_after_s")
        duration = data.get("duration_ms")
        if not isinstance(status, int) or isinstance(status, bool):
            raise ValueError(f"delivery result: status must be an integer, not {status!r}")
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ValueError("delivery result: headers must be an object of strings")
        if not isinstance(body, str):
            raise ValueError("delivery result: body must be a string")
        if not isinstance(truncated, bool):
            raise ValueError("delivery result: truncated must be a boolean")
        if isinstance(retry_after, bool) or not isinstance(retry_after, int | float | None):
            raise ValueError("delivery result: retry_after_s must be a number or null")
        if not isinstance(duration, int) or isinstance(duration, bool):
            raise ValueError("delivery result: duration_ms must be an integer")
        return cls(
            status=status,
            headers=dict(headers),
            body=body,
            truncated=truncated,
            retry_after_s=None if retry_after is None else float(retry_after),
            duration_ms=duration,
        )


def kept_headers(headers: httpx.Headers) -> dict[str, str]:
    return {name: headers[name] for name in KEPT_RESPONSE_HEADERS if name in headers}


class Tool(Protocol):
    name: str
    description: str
    needs_network: bool
    parameters: dict[str, object]  # JSON Schema of the args, for telling a model about the tool

    def validate(self, args: object, *, allow_secrets: bool = False) -> dict[str, Any]:
        """Normalized args (equal calls normalize equal), or raise InvalidArguments. References to
        secrets are allowed only where said: in a task posted to the API, never in a model's call
        (a model must not be able to send a secret of the host's anywhere)."""
        ...

    def destination_host(self, args: Mapping[str, Any]) -> str:
        """host[:port] of the destination of validated args, for per-host concurrency limits."""
        ...

    async def deliver(
        self, client: DeliveryClient, args: Mapping[str, Any], idempotency_key: str, timeout_s: float
    ) -> DeliveryResult:
        """Deliver validated args once. Any HTTP answer is a DeliveryResult; no answer
        (connection, DNS, timeout) raises NetworkUnreachable."""
        ...


@runtime_checkable
class Resumable(Protocol):
    """A tool whose destination may take a call as a task of its own (DeliveryResult.remote_task)."""

    async def resume(
        self,
        client: DeliveryClient,
        args: Mapping[str, Any],
        idempotency_key: str,
        remote_task: str,
        timeout_s: float,
    ) -> DeliveryResult:
        """Ask after the destination's task: still at it (remote_task set again), or its result."""
        ...

    async def cancel_remote(self, args: Mapping[str, Any], remote_task: str, timeout_s: float) -> None:
        """Ask the destination to cancel its task (DeliveryError: it could not be asked)."""
        ...


class ToolRegistry:
    """The built-in tools, and those listed at run time (MCP servers' tools, replaced whenever
    the servers are listed again)."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self._tools: dict[str, Tool] = {}
        self._listed: dict[str, Tool] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"two tools are named {tool.name!r}")
        self._tools[tool.name] = tool

    def set_listed(self, tools: Iterable[Tool]) -> None:
        """Replace the tools listed at run time; a built-in's name is never taken."""
        self._listed = {t.name: t for t in tools if t.name not in self._tools}

    def get(self, name: str) -> Tool:
        found = self._tools.get(name) or self._listed.get(name)
        if found is None:
            raise UnknownTool(name, self.names())
        return found

    def names(self) -> list[str]:
        return [*self._tools, *self._listed]

    def __iter__(self) -> Iterator[Tool]:
        return iter([*self._tools.values(), *self._listed.values()])
