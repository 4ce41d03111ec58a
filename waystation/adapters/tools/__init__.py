"""Network tools: what they are (base) and the built-in HTTP ones (http)."""

from collections.abc import Sequence

from waystation.adapters.tools.base import (
    MAX_RESULT_BYTES,
    DeliveryResult,
    Resumable,
    Tool,
    ToolRegistry,
)
from waystation.adapters.tools.client import DeliveryClient, new_client
from waystation.adapters.tools.http import HttpRequestTool, WebFetchTool
from waystation.adapters.tools.http_args import MAX_REQUEST_BODY_BYTES
from waystation.adapters.tools.secret_refs import Secrets


def default_tools(secrets: Secrets | None = None, allow_hosts: Sequence[str] = ()) -> ToolRegistry:
    """The built-in network tools: what models and `POST /v1/tasks` may use. `secrets`: where a
    task's header references resolve (None: they are checked for shape only, and not sent);
    `allow_hosts`: `[tools] allow_hosts`, where a model's call may reach any address (reach.py)."""
    return ToolRegistry([HttpRequestTool(secrets, allow_hosts), WebFetchTool(allow_hosts)])


__all__ = [
    "MAX_REQUEST_BODY_BYTES",
    "MAX_RESULT_BYTES",
    "DeliveryClient",
    "DeliveryResult",
    "HttpRequestTool",
    "Resumable",
    "Secrets",
    "Tool",
    "ToolRegistry",
    "WebFetchTool",
    "default_tools",
    "new_client",
]
