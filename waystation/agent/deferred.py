"""A whole turn deferred while offline, delivered like any task once connectivity is back.

A turn that asks to be deferred (`--defer`, `"defer": true`) on a cloud route while the monitor
says offline becomes one `turn` task. The flusher delivers it only while online, like every task;
delivering it runs the turn, which writes its own receipts under the same `turn_id`. What the
route answers decides the task's fate with the queue's usual policy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from waystation.adapters.tools import DeliveryClient, DeliveryResult
from waystation.agent.turns import DEFERRED_TURN_TOOL, TurnEngine, TurnRequest
from waystation.errors import (
    InvalidArguments,
    NetworkUnreachable,
    ProviderError,
    RouteOffline,
    RouteRefused,
    WaystationError,
)


class DeferredTurnTool:
    """Not offered to models, not accepted on `POST /v1/tasks`: only the flusher knows it."""

    name = DEFERRED_TURN_TOOL
    description = "Run a turn that was deferred while offline."
    needs_network = True
    parameters: dict[str, object] = {"type": "object"}

    def __init__(self, engine: TurnEngine) -> None:
        self._engine = engine

    def validate(self, args: object) -> dict[str, Any]:
        if not isinstance(args, dict) or not isinstance(args.get("turn_id"), str):
            raise InvalidArguments(self.name, "needs a turn_id and the turn's request")
        if not isinstance(args.get("request"), dict):
            raise InvalidArguments(self.name, "needs the turn's request")
        return args

    def destination_host(self, args: Mapping[str, Any]) -> str:
        return f"route:{args['request'].get('route') or 'default'}"

    async def deliver(
        self, client: DeliveryClient, args: Mapping[str, Any], idempotency_key: str, timeout_s: float
    ) -> DeliveryResult:
        started = time.monotonic()

        def answer(status: int, body: object, retry_after_s: float | None = None) -> DeliveryResult:
            return DeliveryResult(
                status=status,
                headers={},
                body=json.dumps(body),
                truncated=False,
                retry_after_s=retry_after_s,
                duration_ms=round((time.monotonic() - started) * 1000),
            )

        try:
            result = await self._engine.run(TurnRequest(**args["request"]), turn_id=args["turn_id"])
        except RouteOffline as exc:  # offline again before it could run: no attempt counted
            raise NetworkUnreachable(f"route {exc.route}: offline") from None
        except RouteRefused as exc:
            return answer(409, exc.to_json())
        except ProviderError as exc:
            return answer(503, exc.to_json(), exc.retry_after_s)
        except NetworkUnreachable:
            raise
        except WaystationError as exc:
            return answer(422, exc.to_json())
        return answer(200, result.to_json())
