"""A turn cannot run or did not finish: its route refused (fail-closed), its provider or seat
failed, it ran out of time, or its reply was cut off."""

from __future__ import annotations

from waystation.errors.base import WaystationError


class ProviderError(WaystationError):
    """A provider route answered with a failure that may pass (429, 5xx): retry later."""

    code = "provider_error"
    http_status = 502

    def __init__(self, route: str, status: int, retry_after_s: float | None = None) -> None:
        hint = f"; retry after {retry_after_s:g} s" if retry_after_s is not None else "; retry later"
        super().__init__(f"route {route!r}: the provider answered HTTP {status}{hint}")
        self.route = route
        self.status = status
        self.retry_after_s = retry_after_s


class ProviderRejected(WaystationError):
    """The provider answered that the request itself is wrong (an unknown model, a bad body):
    retrying the same turn would fail the same way, so this is permanent, unlike ProviderError."""

    code = "provider_rejected"
    http_status = 502

    def __init__(self, route: str, status: int, detail: str) -> None:
        super().__init__(f"route {route!r}: the provider rejected the request (HTTP {status}): {detail}")
        self.route = route
        self.status = status
        self.detail = detail


class SeatRunFailed(WaystationError):
    """A seat CLI ended without an answer. The message has the exit code and never the CLI's
    output, which may quote its credential."""

    code = "seat_failed"
    http_status = 502

    def __init__(self, route: str, command: str, detail: str, returncode: int | None = None) -> None:
        super().__init__(
            f"route {route!r}: `{command}` {detail} (its output is not shown: it may hold credentials)"
        )
        self.route = route
        self.command = command
        self.detail = detail
        self.returncode = returncode


class TurnTimeout(WaystationError):
    code = "turn_timeout"
    http_status = 504

    def __init__(self, limit_s: float) -> None:
        super().__init__(f"the turn ran past its {limit_s:g} s limit")
        self.limit_s = limit_s


class TurnFailed(WaystationError):
    """A turn failed in a way no other error names (a bug): it still ends `error` with its
    receipt, so it is never left `running` for ever, and the answer says which turn."""

    code = "turn_failed"
    http_status = 500

    def __init__(self, turn_id: str, problem: str) -> None:
        super().__init__(f"turn {turn_id} failed: {problem}; it ended with an error receipt")
        self.turn_id = turn_id
        self.problem = problem


class ReplyCutOff(WaystationError):
    """The reply reached max_tokens inside a tool call: there is neither a call to make nor an
    answer to show (its JSON is never passed off as the answer)."""

    code = "reply_cut_off"
    http_status = 422

    def __init__(self, max_tokens: int) -> None:
        super().__init__(
            f"the model's reply was cut off at max_tokens ({max_tokens}) inside a tool call; raise max_tokens"
        )
        self.max_tokens = max_tokens


class RouteRefused(WaystationError):
    code = "route_refused"
    http_status = 409
    exit_code = 4

    def __init__(
        self,
        route: str,
        reason: str,
        *,
        provider: str = "",
        auth_lane: str = "none",
        cost_lane: str = "local",
    ) -> None:
        super().__init__(f"route {route!r} refused the turn: {reason}")
        self.route = route
        self.reason = reason
        # The lanes of the route that refused, so its `refused` receipt names them truthfully.
        self.provider = provider
        self.auth_lane = auth_lane
        self.cost_lane = cost_lane


class RouteOffline(RouteRefused):
    """The route needs the network and the host is offline: the same turn may run once it is back
    (a deferred turn waits for that instead of failing). Same code and exit code as any refusal."""

    OFFLINE = "offline: cloud routes need the network"

    @classmethod
    def of(cls, refusal: RouteRefused) -> RouteOffline:
        """The offline refusal of the route that gave `refusal` (its lanes kept)."""
        return cls(
            refusal.route,
            cls.OFFLINE,
            provider=refusal.provider,
            auth_lane=refusal.auth_lane,
            cost_lane=refusal.cost_lane,
        )
