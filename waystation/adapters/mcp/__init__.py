"""The MCP client: sessions with configured servers (session.py) and their tools as Waystation
tools (tools.py): `mcp` for a task, NAME__TOOL as a model is offered each one."""

from waystation.adapters.mcp.session import ListedTool, McpRefused, call_tool, list_tools
from waystation.adapters.mcp.tools import MCP_TOOL, McpCallResult, McpCallTool, ServerTool

__all__ = [
    "MCP_TOOL",
    "ListedTool",
    "McpCallResult",
    "McpCallTool",
    "McpRefused",
    "ServerTool",
    "call_tool",
    "list_tools",
]
