"""The turn engine: prompt -> model -> tool calls -> results -> model, bounded in steps and time.

A network tool runs at once while the monitor says `online`; otherwise the call is parked as a
task (its idempotency key derived from the turn and the call, so a retried turn never parks it
twice) and the model is told it was deferred, with the task id. The turn's receipt, its parked
tasks and its saved conversation commit in one transaction. When every parked task has settled,
the turn resumes with the real results and writes a linked receipt (same `turn_id`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from waystation import receipts
from waystation.adapters.models.base import (
    GenerationRequest,
    Message,
    ModelBackend,
    TokenSink,
    ToolChoice,
    ToolSpec,
)
from waystation.adapters.tools import ToolRegistry
from waystation.db import Database
from waystation.errors import (
    EmptyPrompt,
    InvalidArguments,
    RouteOffline,
    RouteRefused,
    TurnTimeout,
    UnknownTool,
    WaystationError,
)
from waystation.ports import Announce, Connectivity, Deliver, Outcome
from waystation.queue.store import TaskStore
from waystation.queue.tasks import NewTask
from waystation.receipts import ReceiptDraft, RouteInfo, Usage
from waystation.station.turns.records import claim_for_resume, save_turn
from waystation.station.turns.request import DEFERRED_TURN_TOOL, TurnRequest, TurnResult

log = structlog.get_logger(__name__)

TURN_TIMEOUT_S = 300.0
RESULT_CHARS_FOR_MODEL = 2000  # a tool result is cut to this before the model sees it


@dataclass
class _Progress:
    """What one run (or resumption) of a turn has done so far."""

    messages: list[Message]
    first_choice: ToolChoice
    resumed: bool = False
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cold_load_ms: int | None = None
    model_answered: str | None = None
    telemetry: dict[str, str] = field(default_factory=dict)
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    parked: list[NewTask] = field(default_factory=list)
    deferred: dict[str, str] = field(default_factory=dict)  # task id -> tool call id


class TurnEngine:
    def __init__(
        self,
        db: Database,
        store: TaskStore,
        tools: ToolRegistry,
        connectivity: Connectivity,
        deliver: Deliver,
        route_for: Callable[[str | None, str | None], Awaitable[tuple[RouteInfo, ModelBackend]]],
        announce: Announce,
        *,
        turn_timeout_s: float = TURN_TIMEOUT_S,
    ) -> None:
        self._db = db
        self._store = store
        self._tools = tools
        self._connectivity = connectivity
        self._deliver = deliver
        self._route_for = route_for
        self._announce = announce  # told of every finished turn once its receipt committed
        self._turn_timeout_s = turn_timeout_s

    async def run(
        self, request: TurnRequest, on_token: TokenSink | None = None, *, turn_id: str | None = None
    ) -> TurnResult:
        """One turn; a refused route, a bad model or a model failure ends in a receipt too.

        `turn_id` continues a turn that was deferred whole (its receipts share the id).
        """
        turn_id = turn_id or receipts.new_id("turn")
        messages: list[Message] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        if request.messages:
            messages += request.messages
        else:
            messages.append({"role": "user", "content": request.prompt})
        last = messages[-1]
        if last.get("role") != "user" or not str(last.get("content") or "").strip():
            raise EmptyPrompt()
        return await self._drive(turn_id, request, _Progress(messages, request.tool_choice), on_token)

    async def resume(self, turn_id: str) -> TurnResult | None:
        """Continue a parked turn whose tasks have all settled; None if it is not ready or taken."""
        loaded = await self._db.write(lambda conn: claim_for_resume(conn, turn_id))
        if loaded is None:
            return None
        request_json, messages, deferred = loaded
        request = TurnRequest(**request_json)
        tasks = {t.id: t for t in await self._store.for_turn(turn_id)}
        for message in messages:
            task_id = message.get("waystation_task_id")
            if message.get("role") == "tool" and task_id in deferred and task_id in tasks:
                task = tasks[task_id]
                message["content"] = _result_for_model(
                    {"state": str(task.state), "result": task.result, "error": task.last_error}
                )
        log.info("resuming turn", turn_id=turn_id)
        # The resumed model gets the turn's step budget again, and may (not must) call tools.
        first_choice: ToolChoice = "none" if request.tool_choice == "none" else "auto"
        return await self._drive(turn_id, request, _Progress(messages, first_choice, resumed=True), None)

    async def _drive(
        self, turn_id: str, request: TurnRequest, progress: _Progress, on_token: TokenSink | None
    ) -> TurnResult:
        # Every log line written while this turn runs (the model's included) carries its id.
        with structlog.contextvars.bound_contextvars(turn_id=turn_id):
            return await self._drive_turn(turn_id, request, progress, on_token)

    async def _drive_turn(
        self, turn_id: str, request: TurnRequest, progress: _Progress, on_token: TokenSink | None
    ) -> TurnResult:
        started = time.perf_counter()
        route = RouteInfo(name=request.route or "local", provider="", auth_lane="none", cost_lane="local")
        try:
            route, model = await self._route_for(request.route, request.model)
            async with asyncio.timeout(self._turn_timeout_s):
                await self._loop(turn_id, request, progress, model, on_token)
        except WaystationError as exc:
            if isinstance(exc, RouteRefused):
                route = RouteInfo(exc.route, exc.provider, exc.auth_lane, exc.cost_lane)
                if request.defer and isinstance(exc, RouteOffline):
                    return await self._defer_whole_turn(turn_id, request, progress, route, started)
            status = "refused" if isinstance(exc, RouteRefused) else "error"
            reason = getattr(exc, "reason", None) or exc.message
            await self._finish(turn_id, request, progress, route, status, reason, started)
            raise
        except TimeoutError:
            timeout = TurnTimeout(self._turn_timeout_s)
            await self._finish(turn_id, request, progress, route, "error", timeout.message, started)
            raise timeout from None
        except asyncio.CancelledError:
            # The caller went away or the agent is stopping: the turn still gets its receipt.
            reason = "interrupted: the turn was cancelled (client gone or agent stopping)"
            await asyncio.shield(self._finish(turn_id, request, progress, route, "error", reason, started))
            raise
        status = "parked" if progress.deferred else "ok"
        return await self._finish(turn_id, request, progress, route, status, None, started)

    async def _defer_whole_turn(
        self, turn_id: str, request: TurnRequest, progress: _Progress, route: RouteInfo, started: float
    ) -> TurnResult:
        """Offline, and the turn asked to wait: it becomes one `turn` task, run once online."""
        task_id = receipts.new_id("t")
        args = {"turn_id": turn_id, "request": dataclasses.replace(request, defer=False).to_json()}
        progress.parked.append(
            NewTask(
                tool=DEFERRED_TURN_TOOL,
                args=args,
                host=f"route:{route.name}",
                idempotency_key=f"{turn_id}-deferred",
                turn_id=turn_id,
                task_id=task_id,
            )
        )
        progress.deferred[task_id] = ""
        reason = "deferred: offline; the whole turn runs when the network is back"
        return await self._finish(
            turn_id, request, progress, route, "parked", reason, started, turn_state="deferred"
        )

    async def _loop(
        self,
        turn_id: str,
        request: TurnRequest,
        progress: _Progress,
        model: ModelBackend,
        on_token: TokenSink | None,
    ) -> None:
        specs = [ToolSpec(t.name, t.description, t.parameters) for t in self._tools]
        while progress.steps < request.max_steps:
            # "required" forces a call on the first step only; the last step must answer in text.
            choice: ToolChoice = progress.first_choice if progress.steps == 0 else "auto"
            if progress.steps == request.max_steps - 1 or request.tool_choice == "none":
                choice = "none"
            generation = await model.generate(
                GenerationRequest(
                    [_for_model(m) for m in progress.messages],
                    tools=specs if choice != "none" else (),
                    tool_choice=choice,
                    max_tokens=request.max_tokens,
                    temperature=request.temperature,
                ),
                on_token,
            )
            progress.steps += 1
            progress.prompt_tokens += generation.prompt_tokens
            progress.completion_tokens += generation.completion_tokens
            if generation.cold_load_ms is not None:
                progress.cold_load_ms = generation.cold_load_ms
            progress.model_answered = generation.model_answered or progress.model_answered
            progress.telemetry.update(generation.telemetry)
            if generation.finish_reason == "cancelled":  # the backend was stopped (closing)
                raise asyncio.CancelledError
            if not generation.tool_calls:
                progress.text = generation.text
                progress.messages.append({"role": "assistant", "content": generation.text})
                return
            progress.messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [c.to_json() for c in generation.tool_calls],
                }
            )
            for index, call in enumerate(generation.tool_calls):
                await self._call_tool(turn_id, progress, call.id, call.name, call.arguments, index)
            if progress.deferred:
                return  # the model waits for the parked results; the turn resumes with them

    async def _call_tool(
        self,
        turn_id: str,
        progress: _Progress,
        call_id: str,
        name: str,
        arguments: dict[str, Any],
        index: int,
    ) -> None:
        record: dict[str, Any] = {"id": call_id, "tool": name, "arguments": arguments}
        progress.tool_calls.append(record)
        message: Message = {"role": "tool", "tool_call_id": call_id}
        try:
            tool = self._tools.get(name)
            args = tool.validate(arguments)
        except (UnknownTool, InvalidArguments) as exc:
            record["status"] = "error"
            message["content"] = json.dumps({"error": exc.message})
            progress.messages.append(message)
            return
        key = _call_key(turn_id, len(progress.messages), index)
        if self._connectivity.state == "online":
            sent = await self._deliver(tool.name, args, key)
            if sent.outcome == Outcome.UNREACHABLE:
                self._connectivity.report_network_error()  # then park it, as if offline
            else:
                if sent.result is None:  # nothing was sent: the call itself cannot be made
                    record["status"] = "error"
                    message["content"] = json.dumps({"error": sent.error})
                else:
                    record["status"] = "done"
                    record["result_status"] = sent.status
                    message["content"] = _result_for_model({"state": "done", "result": sent.result})
                progress.messages.append(message)
                return
        task_id = receipts.new_id("t")
        progress.parked.append(
            NewTask(
                tool=tool.name,
                args=args,
                host=tool.destination_host(args),
                idempotency_key=key,
                turn_id=turn_id,
                task_id=task_id,
            )
        )
        progress.deferred[task_id] = call_id
        record["status"] = "deferred"
        record["task_id"] = task_id
        message["waystation_task_id"] = task_id
        message["content"] = json.dumps(
            {
                "status": "deferred",
                "task_id": task_id,
                "message": "offline: queued, delivered when back online",
            }
        )
        progress.messages.append(message)

    async def _finish(
        self,
        turn_id: str,
        request: TurnRequest,
        progress: _Progress,
        route: RouteInfo,
        status: str,
        reason: str | None,
        started: float,
        turn_state: str | None = None,
    ) -> TurnResult:
        """Commit the receipt, the parked tasks and the saved conversation together."""
        draft = ReceiptDraft(
            kind="turn",
            status=status,  # type: ignore[arg-type]
            reason=reason,
            route=route,
            usage=Usage(progress.prompt_tokens, progress.completion_tokens),
            credits_used=0,
            duration_ms=int((time.perf_counter() - started) * 1000),
            turn_id=turn_id,
            deferred_task_ids=tuple(progress.deferred),
            cold_load_ms=progress.cold_load_ms,
            model_answered=progress.model_answered,
            telemetry=progress.telemetry,
        )

        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            for new in progress.parked:
                self._store.insert(conn, new)
            save_turn(
                conn,
                turn_id,
                request.to_json(),
                progress.messages,
                progress.deferred,
                progress.steps,
                turn_state or status,
            )
            return receipts.append(conn, draft)

        receipt = await self._db.write(op)
        result = TurnResult(
            turn_id=turn_id,
            text=progress.text,
            route=route.name,
            receipt_id=receipt["id"],
            status=status,
            tool_calls=progress.tool_calls,
            deferred_task_ids=list(progress.deferred),
            usage=draft.usage,
            model=route.model,
            model_answered=progress.model_answered,
        )
        self._announce.turn_finished(result.to_json(), receipt, progress.resumed)
        return result


def _call_key(turn_id: str, position: int, index: int) -> str:
    """Stable per call: the turn, where the call stands in the conversation, and its index."""
    return f"{turn_id}-m{position}-c{index}"


def _for_model(message: Message) -> Message:
    """Our bookkeeping keys stay out of what the model sees."""
    return {k: v for k, v in message.items() if not k.startswith("waystation_")}


def _result_for_model(outcome: dict[str, Any]) -> str:
    text = json.dumps(outcome, default=str)
    return text if len(text) <= RESULT_CHARS_FOR_MODEL else text[:RESULT_CHARS_FOR_MODEL] + "…(truncated)"
