"""A small synchronous client of the agent's socket API, and the command line's way to its data.

`AgentClient` speaks HTTP over the Unix socket and turns error answers back into WaystationErrors.
`Waystation` is what commands use: each operation goes through the agent when it runs and,
when it does not, to the same station operation in this process (`DirectStation`, in
cli/direct.py), answering with the same JSON objects either way.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from waystation import contract
from waystation.cli.remote_errors import AgentTimeout, AgentUnreachable, error_from, os_cause

# Re-exported: where callers have always found them.
from waystation.cli.remote_errors import RemoteError as RemoteError
from waystation.cli.remote_errors import rebuild_error as rebuild_error
from waystation.errors import AgentNotRunning
from waystation.sse import SseParser

if TYPE_CHECKING:
    from waystation.cli.direct import DirectStation
    from waystation.config import Paths

T = TypeVar("T")

BASE_URL = "http://waystation"
DEFAULT_TIMEOUT_S = 30.0
PAGE = 1000  # receipts per request when reading the whole chain


class AgentClient:
    def __init__(self, socket_path: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._client: httpx.Client | None = None

    @property
    def http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                transport=httpx.HTTPTransport(uds=str(self.socket_path)),
                base_url=BASE_URL,
                timeout=httpx.Timeout(self.timeout_s, connect=5.0),
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        """The decoded JSON answer (None when empty); an error answer raises its WaystationError."""
        return self.request_full(method, path, json=json, params=params)[1]

    def request_full(
        self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """(HTTP status, decoded JSON): for callers that tell 200 from 201."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        with self._translated():
            response = self.http.request(method, path, json=json, params=query)
        if response.status_code >= 400:
            raise error_from(response)
        if not response.content:
            return response.status_code, None
        try:
            return response.status_code, response.json()
        except ValueError:
            raise RemoteError(
                "bad_answer", f"the agent answered {method} {path} with something that is not JSON"
            ) from None

    def post_raw(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """A POST whose answer is the caller's to read, status and headers too (the MCP relay)."""
        with self._translated():
            return self.http.post(path, content=body, headers=headers)

    def follow_events(
        self, last_event_id: int | None = None, on_open: Callable[[], None] | None = None
    ) -> Iterator[tuple[int | None, str, Any]]:
        """(id, event, data) from GET /v1/events, resuming after `last_event_id` when given; data
        is decoded JSON when it is JSON.

        `on_open` is called once the agent has accepted the stream (before any event arrives)."""
        headers = None if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
        opened = None if on_open is None else (lambda _headers: on_open())
        return self._sse("GET", "/v1/events", headers=headers, on_open=opened)

    def stream_sse(
        self,
        method: str,
        path: str,
        json: Any = None,
        read_timeout: float | None = None,
        on_open: Callable[[httpx.Headers], None] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Iterator[tuple[str, Any]]:
        """(event, data) of a Server-Sent Events answer as they come; AgentTimeout when nothing
        comes for `read_timeout` seconds (None: wait as long as the stream is open). `on_open`
        gets the answer's headers before any event."""
        for _ident, event, data in self._sse(
            method, path, json=json, headers=headers, read_timeout=read_timeout, on_open=on_open
        ):
            yield event, data

    def _sse(
        self,
        method: str,
        path: str,
        json: Any = None,
        headers: dict[str, str] | None = None,
        on_open: Callable[[httpx.Headers], None] | None = None,
        read_timeout: float | None = None,
    ) -> Iterator[tuple[int | None, str, Any]]:
        timeout = httpx.Timeout(self.timeout_s, connect=5.0, read=read_timeout)
        with (
            self._translated(),
            self.http.stream(method, path, json=json, headers=headers, timeout=timeout) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise error_from(response)
            if on_open is not None:
                on_open(response.headers)
            parser = SseParser()
            for line in response.iter_lines():
                for found in parser.feed(line):
                    yield found.ident, found.event, found.json()
            # No parser.end(): every event the agent sends ends with a blank line, so what is left
            # is an event cut off by a lost connection, and a half event must not pass as whole.

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        where = self.socket_path
        try:
            yield
        except httpx.ConnectError as exc:
            cause = os_cause(exc)
            if isinstance(cause, FileNotFoundError | ConnectionRefusedError) or not where.exists():
                raise AgentNotRunning(where) from None
            reason = cause.strerror if cause is not None and cause.strerror else str(exc)
            raise AgentUnreachable(
                "agent_unreachable", f"cannot connect to the agent on {where}: {reason}"
            ) from None
        except httpx.TimeoutException:
            raise AgentTimeout(
                "agent_timeout", f"the agent on {where} did not answer within {self.timeout_s:g}s"
            ) from None
        except httpx.TransportError as exc:
            raise AgentUnreachable(
                "agent_unreachable",
                f"lost the connection to the agent on {where}: {exc or type(exc).__name__}",
            ) from None


class Waystation:
    """The operations behind the commands: through the agent, or direct when it is not running."""

    def __init__(self, paths: Paths, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.paths = paths
        self.agent = AgentClient(paths.socket, timeout_s)
        self.via_agent: bool | None = None  # known after the first operation
        self._direct: DirectStation | None = None

    def close(self) -> None:
        self.agent.close()
        if self._direct is not None:
            self._direct.close()

    def __enter__(self) -> Waystation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def direct(self) -> DirectStation:
        if self._direct is None:
            from waystation.cli.direct import DirectStation

            self._direct = DirectStation(self.paths)
        return self._direct

    def _either(self, agent: Callable[[AgentClient], T], direct: Callable[[DirectStation], T]) -> T:
        if self.via_agent is not False:
            try:
                result = agent(self.agent)
            except AgentNotRunning:
                if self.via_agent:  # it answered before: it stopped under us, so say so
                    raise
                self.via_agent = False
            else:
                self.via_agent = True
                return result
        return direct(self.direct)

    def either(self, agent: Callable[[AgentClient], T], direct: Callable[[DirectStation], T]) -> T:
        """`agent` when the agent runs, else `direct` here: for commands with their own requests."""
        return self._either(agent, direct)

    # --- agent only ------------------------------------------------------------------------

    def need_agent(self, method: str, path: str, body: Any = None) -> Any:
        result = self.agent.request(method, path, json=body)
        self.via_agent = True
        return result

    # --- tasks -------------------------------------------------------------------------------

    def add_task(self, tool: str, args: dict[str, Any], key: str | None) -> tuple[contract.Task, bool]:
        """(task, created)."""
        from waystation.station.ops import tasks

        body: contract.NewTask = {"tool": tool, "args": args}
        if key is not None:
            body["idempotency_key"] = key

        def agent(client: AgentClient) -> tuple[contract.Task, bool]:
            status, task = client.request_full("POST", "/v1/tasks", json=body)
            return task, status == 201

        return self._either(agent, lambda d: d.call(tasks.add, tool, args, key))

    def list_tasks(self, state: str | None, limit: int) -> list[contract.Task]:
        from waystation.station.ops import tasks

        return self._answer("GET", "/v1/tasks", tasks.list_tasks, state, limit, query=("state", "limit"))

    def get_task(self, task_id: str) -> contract.Task:
        from waystation.station.ops import tasks

        return self._answer("GET", f"/v1/tasks/{_seg(task_id)}", tasks.get, task_id)

    def retry_task(self, task_id: str) -> contract.Task:
        from waystation.station.ops import tasks

        return self._answer("POST", f"/v1/tasks/{_seg(task_id)}/retry", tasks.retry, task_id)

    def cancel_task(self, task_id: str) -> contract.Task:
        from waystation.station.ops import tasks

        return self._answer("POST", f"/v1/tasks/{_seg(task_id)}/cancel", tasks.cancel, task_id)

    # --- receipts ----------------------------------------------------------------------------

    def receipts_after(self, after: str | None, limit: int) -> list[contract.Receipt]:
        """Up to `limit` receipts after the one named `after` (from the start if None), oldest first."""
        from waystation.station.ops import receipts

        return self._answer("GET", "/v1/receipts", receipts.after, after, limit, query=("after", "limit"))

    def latest_receipts(self, limit: int) -> list[contract.Receipt]:
        """The last `limit` receipts of the chain, oldest first."""
        from waystation.station.ops import receipts

        def agent(client: AgentClient) -> list[contract.Receipt]:
            # The API pages forward from the start; keep the tail as the pages go by.
            tail: collections.deque[contract.Receipt] = collections.deque(maxlen=limit)
            tail.extend(self.iter_receipts())
            return list(tail)

        return self._either(agent, lambda d: d.read(receipts.latest, limit))

    def iter_receipts(self) -> Iterator[contract.Receipt]:
        """The whole chain, oldest first, a page at a time."""
        after = None
        while page := self.receipts_after(after, PAGE):
            yield from page
            after = page[-1]["id"]

    # --- turns -------------------------------------------------------------------------------

    def get_turn(self, turn_id: str) -> contract.Turn:
        from waystation.station.ops import turns

        return self._answer("GET", f"/v1/turns/{_seg(turn_id)}", turns.get, turn_id)

    def list_turns(self, state: str | None, limit: int) -> list[contract.Turn]:
        """Newest first."""
        from waystation.station.ops import turns

        return self._answer("GET", "/v1/turns", turns.list_turns, state, limit, query=("state", "limit"))

    def get_receipt(self, receipt_id: str) -> contract.Receipt:
        from waystation.station.ops import receipts

        return self._answer("GET", f"/v1/receipts/{_seg(receipt_id)}", receipts.get, receipt_id)

    def verify_receipts(self, checkpoint: str | None = None) -> contract.Verification:
        """Against `checkpoint` (a signed note's text) when given, else the one the agent keeps."""
        from waystation.station.ops import receipts

        if checkpoint is None:
            return self._answer("GET", "/v1/receipts/verify", receipts.verify)

        def agent(client: AgentClient) -> contract.Verification:
            body: contract.CheckpointToVerify = {"checkpoint": checkpoint}
            answer: contract.Verification = client.request("POST", "/v1/receipts/verify", json=body)
            return answer

        return self._either(agent, lambda d: d.read(receipts.verify, checkpoint))

    def receipts_key(self) -> contract.VerifierKey:
        from waystation.station.ops import receipts

        return self._answer("GET", "/v1/receipts/key", receipts.key)

    def checkpoint(self) -> contract.Checkpoint:
        from waystation.station.ops import receipts

        return self._answer("GET", "/v1/receipts/checkpoint", receipts.checkpoint)

    def prove(self, receipt_id: str) -> contract.ReceiptProof:
        from waystation.station.ops import receipts

        return self._answer("GET", f"/v1/receipts/{_seg(receipt_id)}/proof", receipts.prove, receipt_id)

    def _answer(
        self,
        method: str,
        path: str,
        op: Callable[..., Coroutine[Any, Any, T]],
        *args: Any,
        query: tuple[str, ...] = (),
    ) -> T:
        """The agent's answer to `method path`, or with no agent the same operation run here;
        `query` names the leading args the agent gets as query parameters. Only reads and steering
        of existing tasks go this way: with no database there is nothing to steer, so none is made."""
        params = dict(zip(query, args, strict=False))

        def agent(client: AgentClient) -> T:
            answer: T = client.request(method, path, params=params)  # the same object, as JSON
            return answer

        return self._either(agent, lambda d: d.read(op, *args))


def _seg(ident: str) -> str:
    """An id as one URL path segment (an id with '/' or '?' must not reach another route)."""
    from urllib.parse import quote

    return quote(ident, safe="")
