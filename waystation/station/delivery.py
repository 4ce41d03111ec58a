"""The queue's Deliver port: a task sent once by its tool, or a whole deferred turn run once.

Foreign answers become a `Delivery` here, at the edge: an HTTP status is classified by the queue's
policy; a tool's own errors are outcomes (no answer is UNREACHABLE and counts no attempt, arguments
no attempt can fix are DEAD). A turn deferred while offline (`--defer`) is a `turn` task: running
it is its delivery, and what the route does decides the outcome, with no HTTP status invented.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from waystation.adapters.tools import DeliveryClient, Resumable, ToolRegistry
from waystation.errors import (
    DeliveryError,
    DestinationRefused,
    InvalidArguments,
    NetworkUnreachable,
    ProviderError,
    RouteOffline,
    UnknownTool,
    WaystationError,
)
from waystation.ports import Delivery, Outcome
from waystation.queue.policy import classify
from waystation.station.turns.engine import TurnEngine
from waystation.station.turns.request import DEFERRED_TURN_TOOL, TurnRequest


class Deliveries:
    def __init__(
        self, tools: ToolRegistry, client: DeliveryClient, timeout_s: float, turns: TurnEngine | None = None
    ) -> None:
        self._tools = tools
        self._client = client
        self._timeout_s = timeout_s
        self._turns = turns

    def with_turns(self, turns: TurnEngine) -> Deliveries:
        """These deliveries, and whole turns deferred while offline run by `turns` (the flusher's)."""
        return Deliveries(self._tools, self._client, self._timeout_s, turns)

    async def __call__(
        self, tool: str, args: Mapping[str, Any], idempotency_key: str, remote_task: str | None = None
    ) -> Delivery:
        if tool == DEFERRED_TURN_TOOL and self._turns is not None:
            return await run_deferred_turn(self._turns, args)
        try:
            chosen = self._tools.get(tool)
            if remote_task is None:
                answer = await chosen.deliver(self._client, args, idempotency_key, self._timeout_s)
            elif isinstance(chosen, Resumable):  # its destination holds the call as its own task
                answer = await chosen.resume(
                    self._client, args, idempotency_key, remote_task, self._timeout_s
                )
            else:
                return Delivery(Outcome.DEAD, error=f"{tool} cannot ask after its destination's task")
        except (UnknownTool, InvalidArguments, DestinationRefused) as exc:
            # The tool went away in an upgrade, httpx refused what validation let through, or a
            # model's call led to an address it may not reach: no later attempt can succeed.
            return Delivery(Outcome.DEAD, error=exc.message)
        except DeliveryError as exc:  # no answer (NetworkUnreachable), or none that can be read
            return Delivery(Outcome.UNREACHABLE, error=exc.message)
        if answer.remote_task is not None:  # taken as a task, still at it: ask again then
            return Delivery(
                Outcome.WAITING,
                status=answer.status,
                remote_task=answer.remote_task,
                retry_after_s=answer.retry_after_s,
                error=answer.body,
            )
        return Delivery(
            classify(answer.status),
            status=answer.status,
            result=answer.to_json(),
            retry_after_s=answer.retry_after_s,
        )


async def run_deferred_turn(turns: TurnEngine, args: Mapping[str, Any]) -> Delivery:
    """Run a turn deferred while offline; it writes its own receipts under its `turn_id`."""
    try:
        result = await turns.run(TurnRequest(**args["request"]), turn_id=args["turn_id"])
    except (RouteOffline, NetworkUnreachable) as exc:  # offline again: no attempt counted
        return Delivery(Outcome.UNREACHABLE, error=exc.message)
    except ProviderError as exc:
        return Delivery(
            Outcome.RETRY, retry_after_s=exc.retry_after_s, error=exc.message, result=exc.to_json()
        )
    except WaystationError as exc:  # refused, or the turn itself failed: running it again would too
        return Delivery(Outcome.DEAD, error=exc.message, result=exc.to_json())
    return Delivery(Outcome.DONE, result=result.to_json())
