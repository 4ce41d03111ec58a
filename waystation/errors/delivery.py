"""A task's delivery did not get an answer, or may not be sent at all: the split that decides
whether the queue retries it (DeliveryError) or kills it at once (DestinationRefused)."""

from __future__ import annotations

from waystation.errors.base import WaystationError


class DestinationRefused(WaystationError):
    """Never sent: the destination's address is not one this delivery may connect to. Not a
    DeliveryError: no later try can reach it either, so the task is dead at once."""

    code = "destination_refused"
    http_status = 403

    def __init__(self, host: str, address: str, kind: str, rule: str) -> None:
        where = host if host == address else f"{host} ({address})"
        super().__init__(f"refused: {where} is {kind}, not a public address; {rule}")
        self.host = host
        self.address = address
        self.kind = kind
        self.rule = rule


class DeliveryError(WaystationError):
    code = "delivery_error"
    http_status = 502


class NetworkUnreachable(DeliveryError):
    """No answer from the destination: retried without counting an attempt."""

    code = "network_unreachable"
