"""The fleet's hub (NATS JetStream) cannot be used: unreachable (retried) or it refused."""

from __future__ import annotations

from waystation.errors.base import WaystationError


class FleetError(WaystationError):
    """The fleet's hub (NATS JetStream) cannot be used: unreachable, or it refused."""

    code = "fleet_error"
    http_status = 503


class FleetUnavailable(FleetError):
    """The hub did not answer in time (down, or the link is cut): retried, never lost."""

    code = "fleet_unavailable"


class FleetRefused(FleetError):
    """The hub answered no: no JetStream, bad credentials, a permission it does not grant."""

    code = "fleet_refused"
