"""Network tools: what they are (base) and the built-in HTTP ones (http)."""

from waystation.adapters.tools.base import (
    MAX_RESULT_BYTES,
    DeliveryResult,
    Tool,
    ToolRegistry,
    default_tools,
)
from waystation.adapters.tools.client import DeliveryClient, new_client
from waystation.adapters.tools.http import MAX_REQUEST_BODY_BYTES, HttpRequestTool, WebFetchTool

__all__ = [
    "MAX_REQUEST_BODY_BYTES",
    "MAX_RESULT_BYTES",
    "DeliveryClient",
    "DeliveryResult",
    "HttpRequestTool",
    "Tool",
    "ToolRegistry",
    "WebFetchTool",
    "default_tools",
    "new_client",
]
