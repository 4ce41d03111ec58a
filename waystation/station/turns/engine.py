"""The turn engine: prompt -> model -> tool calls -> results -> model, bounded in steps and time.

A turn's row is written when it starts, so it can be looked up (and waited on) at once. A network
tool runs at once while the monitor says `online`; otherwise (or when its destination does not
answer) the call is parked as a task (its idempotency key derived from the turn and the call, so
the same call is never parked twice) and the model is told it was deferred. The turn's receipt,
its parked tasks and its row commit in one transaction; then each parked task is announced, as
every committed task is (that is what wakes the agent's flusher). When every parked task has
settled the turn resumes with the real results and writes a linked receipt (same `turn_id`); if
any of them did not succeed it ends `error` naming them, and the model is not asked to pretend
otherwise. Which tools a step offers and which calls may go out is station/turns/calls.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import structlog

from waystation import contract
from waystation.adapters.models.base import (
    Generation,
    GenerationRequest,
    KeepsState,
    Message,
    ModelBackend,
    StageSink,
    TokenSink,
    ToolChoice,
    ToolSpec,
    urls_to_call,
)
from waystation.adapters.models.json_objects import user_objects
from waystation.adapters.tools import ToolRegistry
from waystation.contract import AuthLane, CostLane
from waystation.db import Database
from waystation.errors import (
    EmptyPrompt,
    ReplyCutOff,
    RouteOffline,
    RouteRefused,
    TurnFailed,
    TurnTimeout,
    WaystationError,
)
from waystation.ports import Announce, Connectivity, Deliver
from waystation.queue.policy import TaskState
from waystation.queue.store import TaskStore
from waystation.queue.tasks import NewTask
from waystation.receipts import chain
from waystation.receipts.chain import RouteInfo
from waystation.station.turns.calls import (
    Caller,
    answered_calls,
    conversation_urls,
    is_repeat,
    offer,
    offer_client,
)
from waystation.station.turns.finish import finish_turn
from waystation.station.turns.progress import Progress
from waystation.station.turns.records import TurnRow, claim_for_resume, save_turn
from waystation.station.turns.request import DEFERRED_TURN_TOOL, TurnRequest, TurnResult
from waystation.station.turns.results import result_for_model

log = structlog.get_logger(__name__)

TURN_TIMEOUT_S = 300.0


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
        allow_hosts: Sequence[str] = (),
        allow_writes: Sequence[str] = (),
        turn_timeout_s: float = TURN_TIMEOUT_S,
    ) -> None:
        self._db = db
        self._store = store
        self._tools = tools
        self._connectivity = connectivity
        self._deliver = deliver
        self._route_for = route_for
        self._announce = announce  # told of every finished turn once its receipt committed
        self._allow_hosts = tuple(allow_hosts)
        self._allow_writes = tuple(allow_writes)
        self._caller = Caller(tools, connectivity, deliver, self._allow_hosts, self._allow_writes)
        self._turn_timeout_s = turn_timeout_s
        # Commit the receipt, the parked tasks and the turn's row together (finish.py).
        self._finish = functools.partial(finish_turn, db, store, announce)

    async def run(
        self,
        request: TurnRequest,
        on_token: TokenSink | None = None,
        *,
        on_stage: StageSink | None = None,
        turn_id: str | None = None,
    ) -> TurnResult:
        """One turn; a refused route, a bad model or a model failure ends in a receipt too.

        `turn_id` names the turn (a caller that must know it first, or a turn deferred whole that
        now runs: its receipts share the id).
        """
        turn_id = turn_id or chain.new_id("turn")
        progress = await self.begin(turn_id, request)
        progress.on_stage = on_stage
        return await self._drive(turn_id, request, progress, on_token)

    async def begin(self, turn_id: str, request: TurnRequest) -> Progress:
        """Check the prompt and write the turn's `running` row, so it can be looked up at once."""
        messages: list[Message] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        if request.messages:
            messages += request.messages
        else:
            messages.append({"role": "user", "content": request.prompt})
        last = messages[-1]
        # A client's conversation may end with its tools' results, for the model to answer from.
        answers_tools = request.client_tools is not None and last.get("role") == "tool"
        if not answers_tools and (last.get("role") != "user" or not str(last.get("content") or "").strip()):
            raise EmptyPrompt()
        row = TurnRow("running", request.to_json(), messages, route=request.route, model=request.model)
        await self._db.write(lambda conn: save_turn(conn, turn_id, row))
        return Progress(messages)

    async def resume(self, turn_id: str) -> TurnResult | None:
        """Continue a parked turn whose tasks have all settled; None if it is not ready or taken."""
        loaded = await self._db.write(lambda conn: claim_for_resume(conn, turn_id))
        if loaded is None:
            return None
        request = TurnRequest(**loaded.request)
        tasks = {t.id: t for t in await self._store.for_turn(turn_id)}
        progress = Progress(loaded.messages, resumed=True, tool_calls=loaded.tool_calls)
        for message in progress.messages:
            task = tasks.get(message.get("waystation_task_id", ""))
            if message.get("role") == "tool" and task is not None and task.id in loaded.deferred:
                message["content"] = result_for_model(task.result, task.last_error)
        failed = [t for i, t in tasks.items() if i in loaded.deferred and t.state != TaskState.DONE]
        log.info("resuming turn", turn_id=turn_id, failed=len(failed))
        return await self._drive(turn_id, request, progress, None, failed=failed)

    async def drive(
        self, turn_id: str, request: TurnRequest, progress: Progress, on_token: TokenSink | None
    ) -> TurnResult:
        """Run a turn `begin` wrote (for callers that start it in the background)."""
        return await self._drive(turn_id, request, progress, on_token)

    async def _drive(
        self,
        turn_id: str,
        request: TurnRequest,
        progress: Progress,
        on_token: TokenSink | None,
        failed: Sequence[Any] = (),
    ) -> TurnResult:
        # Every log line written while this turn runs (the model's included) carries its id.
        with structlog.contextvars.bound_contextvars(turn_id=turn_id):
            return await self._drive_turn(turn_id, request, progress, on_token, failed)

    async def _drive_turn(
        self,
        turn_id: str,
        request: TurnRequest,
        progress: Progress,
        on_token: TokenSink | None,
        failed: Sequence[Any],
    ) -> TurnResult:
        started = time.perf_counter()
        route = RouteInfo(name=request.route or "local", provider="", auth_lane="none", cost_lane="local")
        try:
            route, model = await self._route_for(request.route, request.model)
            if failed:  # a resumed turn whose calls did not all succeed: say which, run nothing
                reason = "parked calls did not succeed: " + "; ".join(
                    f"{t.tool} {t.args.get('url', '')} (task {t.id} {t.state}: {t.last_error or 'no answer'})"
                    for t in failed
                )
                return await self._finish(turn_id, request, progress, route, "error", reason, started)
            async with asyncio.timeout(self._turn_timeout_s):
                await self._loop(turn_id, request, progress, model, on_token)
        except WaystationError as exc:
            if isinstance(exc, RouteRefused):
                # the error carries the refusing route's own lanes (a RouteInfo's, as strings)
                lanes = cast(tuple[AuthLane, CostLane], (exc.auth_lane, exc.cost_lane))
                route = RouteInfo(exc.route, exc.provider, *lanes)
                if request.defer and isinstance(exc, RouteOffline):
                    return await self._defer_whole_turn(turn_id, request, progress, route, started)
            status: contract.ReceiptStatus = "refused" if isinstance(exc, RouteRefused) else "error"
            reason = getattr(exc, "reason", None) or exc.message
            await self._finish(turn_id, request, progress, route, status, reason, started)
            raise
        except TimeoutError:
            timeout = TurnTimeout(self._turn_timeout_s)
            await self._finish(turn_id, request, progress, route, "error", timeout.message, started)
            raise timeout from None
        except Exception as exc:  # a bug: the turn still ends, with its receipt, never `running`
            log.exception("turn failed", turn_id=turn_id)
            failure = TurnFailed(turn_id, f"unexpected {type(exc).__name__}")
            await self._finish(turn_id, request, progress, route, "error", failure.message, started)
            raise failure from exc
        except asyncio.CancelledError:
            # The agent is stopping (or a caller gave up on it): the turn still gets its receipt.
            # A resumption cut short is parked again, so the next start resumes it.
            reason = "interrupted: the turn was cancelled (agent stopping or caller gone)"
            state = "parked" if progress.resumed else "interrupted"
            finishing = self._finish(turn_id, request, progress, route, "error", reason, started, state)
            await asyncio.shield(finishing)
            raise
        status = "parked" if progress.deferred else "ok"
        return await self._finish(turn_id, request, progress, route, status, progress.reason, started)

    async def _defer_whole_turn(
        self, turn_id: str, request: TurnRequest, progress: Progress, route: RouteInfo, started: float
    ) -> TurnResult:
        """Offline, and the turn asked to wait: it becomes one `turn` task, run once online."""
        task_id = chain.new_id("t")
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
        return await self._finish(turn_id, request, progress, route, "parked", reason, started, "deferred")

    async def _loop(
        self,
        turn_id: str,
        request: TurnRequest,
        progress: Progress,
        model: ModelBackend,
        on_token: TokenSink | None,
    ) -> None:
        # A call is demanded (required, or a named tool) on the first step of a turn only; a
        # resumed model may call again; the last step, and a step after a repeated call, answer.
        choice = "auto" if progress.resumed and request.tool_choice != "none" else request.tool_choice
        if request.client_tools is not None:  # a chat completion: the model's calls go back
            specs, model_choice = offer_client(request.client_tools, request.tool_choice)
            generation = await self._generate(request, progress, model, specs, model_choice, on_token)
            # A call the client's tool messages answered is not asked for again (the client would
            # run it again, and ask again): it is dropped, and with nothing else called (even
            # when the client demands a call) the model answers from the results instead.
            answered = answered_calls(progress.messages)
            fresh = [c for c in generation.tool_calls if not is_repeat(c, answered)]
            if generation.tool_calls and not fresh:
                progress.reason = "answered from the results: the model asked again for a call they answer"
                generation = await self._generate(request, progress, model, [], "none", on_token)
            elif len(fresh) < len(generation.tool_calls):
                generation = dataclasses.replace(generation, tool_calls=fresh)
            if _answered(progress, generation):
                return
            progress.tool_calls += [
                {"id": c.id, "tool": c.name, "arguments": c.arguments, "status": "client"}
                for c in generation.tool_calls
            ]
            return
        for step in range(request.max_steps):
            if step == request.max_steps - 1 and choice != "none":
                choice = "none"
                progress.reason = f"answered at the step limit ({request.max_steps} steps)"
            urls = conversation_urls(progress.messages)
            # Offered: the URLs still to call (and, before any call, the allowed hosts). While a
            # URL the user named has no answer here, `auto` calls for it: a small model left to
            # choose answered "fetch URL and tell me X" from nothing, inventing the page. Once
            # every one has its answer, the next step answers from them.
            to_call = urls_to_call(progress.messages)
            step_choice = "required" if choice == "auto" and to_call else choice
            allowed = self._allow_hosts if not progress.tool_calls else ()
            objects = user_objects(progress.messages)  # what a write may carry
            specs, model_choice = offer(
                self._tools, step_choice, to_call, allowed, objects, self._allow_writes
            )
            generation = await self._generate(request, progress, model, specs, model_choice, on_token)
            if _answered(progress, generation):
                return
            repeated = False
            for call in generation.tool_calls:
                repeated |= await self._caller.call(
                    turn_id, progress, call.id, call.name, call.arguments, urls, objects
                )
            if progress.deferred:  # the model waits for the parked results; the turn resumes with them
                await _keep_for_resume(model, request, progress)
                return
            choice = "none" if repeated else "auto"  # it has that result already: answer now

    async def _generate(
        self,
        request: TurnRequest,
        progress: Progress,
        model: ModelBackend,
        specs: Sequence[ToolSpec],
        choice: ToolChoice,
        on_token: TokenSink | None,
    ) -> Generation:
        """One step's generation, counted into the turn's progress."""
        generation = await model.generate(
            GenerationRequest(
                [_for_model(m) for m in progress.messages],
                tools=tuple(specs),
                tool_choice=choice,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                seed=request.seed,
                top_p=request.top_p,
                frequency_penalty=request.frequency_penalty,
                presence_penalty=request.presence_penalty,
                on_stage=progress.on_stage,
                response_format=request.response_format,
                keep_alive=request.keep_alive,
                stop=tuple(request.stop or ()),
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
        progress.finish_reason = generation.finish_reason
        if generation.finish_reason == "cancelled":  # the backend was stopped (closing)
            raise asyncio.CancelledError
        if generation.finish_reason == "cut_off":  # inside a tool call: no answer to give
            raise ReplyCutOff(request.max_tokens)
        return generation


async def _keep_for_resume(model: ModelBackend, request: TurnRequest, progress: Progress) -> None:
    """A model that can keeps the state its resumed answer will start with (an answer step: no
    tools offered), so the resumption evaluates only what the results add."""
    if not isinstance(model, KeepsState):
        return
    messages = [_for_model(m) for m in progress.messages]
    try:
        await model.keep_for_resume(
            GenerationRequest(messages, tool_choice="none", response_format=request.response_format)
        )
    except Exception:  # a cache: the turn parks all the same, and resumes evaluating it whole
        log.exception("the model could not keep the parked turn's state")


def _answered(progress: Progress, generation: Generation) -> bool:
    """Write the model's reply into the conversation: its answer (True), or its calls."""
    if not generation.tool_calls:
        progress.text = generation.text
        progress.messages.append({"role": "assistant", "content": generation.text})
        return True
    calls = [c.to_json() for c in generation.tool_calls]
    progress.messages.append({"role": "assistant", "content": None, "tool_calls": calls})
    return False


def _for_model(message: Message) -> Message:
    """Our bookkeeping keys stay out of what the model sees."""
    return {k: v for k, v in message.items() if not k.startswith("waystation_")}
