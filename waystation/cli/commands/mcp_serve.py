"""`waystation mcp serve`: Waystation as a stdio MCP server, for an MCP host's config to launch.

It runs no engine of its own: each JSON-RPC line from stdin goes to the agent's `/mcp`
(agent/mcp_http.py) over the socket, with the session id the agent gave at `initialize`, and the
answer comes back as one line on stdout. Turns, tasks and their ids live in the agent, so a host
that polls `tasks/get` gets its answer after this process, or the agent, was restarted.
"""

from __future__ import annotations

import json
import sys
from typing import IO, TYPE_CHECKING, Any

from waystation.errors import WaystationError

if TYPE_CHECKING:
    from waystation.cli.client import AgentClient

RELAY_TIMEOUT_S = 3600.0  # `ask` without the tasks extension waits for the turn's answer
SESSION_HEADER = "Mcp-Session-Id"
AGENT_UNAVAILABLE = -32000  # a JSON-RPC server error: the agent did not answer


def serve() -> None:
    """Serve MCP on stdin/stdout (what an MCP host launches), relaying to the running agent.

    Tools: `ask` (`{"prompt", "model"?}`: a turn; network calls park while offline), `queue_task`
    (`{"tool", "args", "idempotency_key"?}`: as `POST /v1/tasks`) and `status`. A host that
    declares the tasks extension (`io.modelcontextprotocol/tasks`) gets a task for an `ask` that
    parks or takes longer than a few seconds; its `taskId` is the turn id, and `tasks/get`
    answers across restarts. Needs the running agent (`waystation run`); the same server is at
    `/mcp` on the agent's socket (Streamable HTTP). Host config:

    ```
    {"mcpServers": {"waystation": {"command": "waystation", "args": ["mcp", "serve"]}}}
    ```
    """
    from waystation.cli.client import AgentClient
    from waystation.config import Paths

    client = AgentClient(Paths.resolve().socket, timeout_s=RELAY_TIMEOUT_S)
    try:
        relay(client, sys.stdin, sys.stdout)
    except KeyboardInterrupt:
        return
    finally:
        client.close()


def relay(client: AgentClient, lines: IO[str], out: IO[str]) -> None:
    """Each line in, its answer (if it has one) out; until the input ends."""
    session: str | None = None
    for line in lines:
        if not line.strip():
            continue
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if session is not None:
            headers[SESSION_HEADER] = session
        try:
            response = client.post_raw("/mcp", line.encode(), headers)
        except WaystationError as exc:  # the agent is not running, or went away
            answer = _unavailable(line, f"{exc.code}: {exc.message}")
        else:
            session = response.headers.get(SESSION_HEADER, session)
            answer = response.text if response.status_code != 202 and response.content else None
            if response.status_code >= 400 and '"jsonrpc"' not in (answer or ""):
                # The socket's own refusal (a body over its limit, ...): said as JSON-RPC.
                answer = _unavailable(line, f"the agent answered {response.status_code}: {answer}")
        if answer:
            out.write(answer.strip() + "\n")
            out.flush()


def _unavailable(line: str, message: str) -> str | None:
    """A JSON-RPC error for a request the agent could not answer; nothing for a notification."""
    try:
        message_in: Any = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message_in, dict) or "id" not in message_in or "method" not in message_in:
        return None
    error = {"code": AGENT_UNAVAILABLE, "message": message}
    return json.dumps({"jsonrpc": "2.0", "id": message_in["id"], "error": error})
