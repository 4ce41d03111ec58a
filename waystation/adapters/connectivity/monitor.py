"""The connectivity monitor: OS network events + an HTTP probe -> one state machine.

    state: unknown | online | offline | portal        mode: auto | online | offline

In mode "auto" the state follows verified probes. A forced mode ("airplane mode") sets the state
to the mode at once; probes may still run on explicit request (their result shows up in
``last_probe`` for diagnostics) but never change the state until the mode is "auto" again.

Transitions in auto mode:
- a probe answering ``expect_status`` -> online (from anything, after one probe);
- a redirect, or a 200 when another status is expected (a captive portal's login page) -> portal;
- a connection/DNS/timeout error or any other status is a failure: online -> offline only after
  two consecutive failures, the second probe ~1 s after the first, so one lost packet does not
  stop the queue; from unknown/portal a single failure is enough (nothing to protect).

Scheduling: one task sleeps on an ``asyncio.Event`` with a timeout, so an idle agent wakes only
for the next due probe: ``online_probe_interval_s`` while online, exponential backoff from 1 s to
``offline_probe_max_s`` otherwise. ``probe_soon()``, ``report_network_error()``, ``set_mode("auto")``
and OS network events set the event and the probe runs at once.

Metered: the ``metered`` setting ("yes"/"no"), or with "auto" NetworkManager's answer, read once
at start and again after each OS network event (never on a timer: an idle agent stays quiet).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import httpx
import structlog

from waystation import contract, timeutil
from waystation.adapters.connectivity.metered import read_nm_metered
from waystation.adapters.connectivity.netlink import NetlinkWatcher
from waystation.config import ConnectivitySettings
from waystation.errors import InputError

State = contract.ConnectivityState
Mode = contract.ConnectivityMode
Outcome = Literal["online", "portal", "failure"]

log = structlog.get_logger(__name__)

# The quick second look before declaring an online host offline.
CONFIRM_DELAY_S = 1.0
FAILURES_TO_GO_OFFLINE = 2
BACKOFF_START_S = 1.0


@dataclass(frozen=True)
class ProbeResult:
    at: float
    outcome: Outcome
    status: int | None
    error: str | None
    duration_ms: int

    def to_json(self) -> contract.Probe:
        return {
            "at": timeutil.iso(self.at),
            "ok": self.outcome == "online",
            "status": self.status,
            "error": self.error,
            "duration_ms": self.duration_ms,
        }


def classify(status: int, expect_status: int) -> tuple[Outcome, str | None]:
    """What an HTTP answer to the probe says about the network (pure)."""
    if status == expect_status:
        return "online", None
    if 300 <= status < 400 or (status == 200 and expect_status != 200):
        # Captive portals intercept the request and redirect to, or serve, a login page.
        return "portal", "captive_portal"
    return "failure", "unexpected_status"


def error_code(exc: BaseException) -> str:
    """A short stable code for a failed probe, chosen by exception type, never by message text."""
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        # httpx reports a failed name lookup as a ConnectError caused (via httpcore) by gaierror.
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, socket.gaierror):
                return "dns_error"
            cause = cause.__cause__ or cause.__context__
        return "connect_error"
    if isinstance(exc, httpx.ProxyError):
        return "proxy_error"
    if isinstance(exc, httpx.ProtocolError):
        return "protocol_error"
    if isinstance(exc, httpx.NetworkError):
        return "network_error"
    return "transport_error"


class ConnectivityMonitor:
    """Owns the connectivity state; use as ``async with ConnectivityMonitor(settings) as m``.

    ``on_change(snapshot)`` runs synchronously on the event loop whenever the state or the mode
    changes, so a subscriber (the queue flusher) can start the instant the state turns online.
    """

    def __init__(
        self,
        settings: ConnectivitySettings,
        *,
        on_change: Callable[[contract.Connectivity], None] | None = None,
        watch_os_events: bool = True,
    ) -> None:
        self._settings = settings
        self._listeners: list[Callable[[contract.Connectivity], None]] = (
            [] if on_change is None else [on_change]
        )
        self._watch_os_events = watch_os_events
        self._mode: Mode = settings.mode
        self._state: State = "unknown" if settings.mode == "auto" else settings.mode
        self._since = timeutil.now()
        self._last_probe: ProbeResult | None = None
        self._failures = 0  # consecutive failed probes while online
        self._backoff_probes = 0  # probes since the state left online, for the backoff
        # After leaving a forced mode the state is only what the user claimed; the next probe
        # decides it alone, without the two-failure grace that protects a verified online state.
        self._verified = settings.mode == "auto"
        self._mode_epoch = 0
        self._wake = asyncio.Event()
        self._probe_requested = settings.mode == "auto"
        self._online = asyncio.Event()
        if self._state == "online":
            self._online.set()
        self._known = asyncio.Event()  # set once the state is no longer "unknown"
        if self._state != "unknown":
            self._known.set()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._watcher: NetlinkWatcher | None = None
        self._nm_metered = False  # NetworkManager's last answer (metered = "auto")
        self._metered_task: asyncio.Task[None] | None = None
        self._metered_again = False  # an OS event arrived while a reading was in flight

    async def __aenter__(self) -> ConnectivityMonitor:
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=self._settings.probe_timeout_s,
            # A fresh connection per probe: a pooled one could hide a dead route or DNS.
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"Cache-Control": "no-cache"},
        )
        if self._watch_os_events:
            watcher = NetlinkWatcher(self._on_os_event)
            if watcher.start():
                self._watcher = watcher
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="connectivity-monitor")
        self._refresh_metered()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        if self._metered_task is not None:
            self._metered_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._metered_task
            self._metered_task = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def state(self) -> State:
        return self._state

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def metered(self) -> bool:
        """Whether to treat the connection as metered (hold back large or unsized work)."""
        setting = self._settings.metered
        if setting == "yes":
            return True
        if setting == "no":
            return False
        return self._nm_metered

    def set_mode(self, mode: Mode) -> None:
        if mode not in get_args(Mode):
            raise InputError(f"connectivity mode must be one of auto, online, offline; got {mode!r}")
        changed = mode != self._mode
        self._mode = mode
        self._mode_epoch += 1  # a probe already in flight answers for the old mode
        self._failures = 0
        self._backoff_probes = 0
        if mode == "auto":
            self._verified = False
            self._probe_requested = True
        self._wake.set()  # re-plan the next probe under the new mode
        if mode != "auto":
            changed = self._set_state(mode, notify=False) or changed
        if changed:
            log.info("connectivity.mode", mode=mode, state=self._state)
            self._notify()

    def report_network_error(self) -> None:
        self.probe_soon()

    def probe_soon(self) -> None:
        self._probe_requested = True
        self._wake.set()

    async def wait_online(self) -> None:
        await self._online.wait()

    async def wait_known(self) -> None:
        """Return once a probe (or the forced mode) has said something other than "unknown"."""
        await self._known.wait()

    def subscribe_online(self) -> asyncio.Event:
        """The event that is set exactly while the state is online. Wait on it; never set it."""
        return self._online

    def snapshot(self) -> contract.Connectivity:
        return {
            "state": self._state,
            "mode": self._mode,
            "since": timeutil.iso(self._since),
            "last_probe": None if self._last_probe is None else self._last_probe.to_json(),
            "metered": self.metered,
        }

    def _on_os_event(self) -> None:
        self._refresh_metered()
        # Airplane mode means no traffic on our account, so OS events do not probe while forced.
        if self._mode == "auto":
            self.probe_soon()

    def _refresh_metered(self) -> None:
        """Read NetworkManager's Metered property in the background (metered = "auto" only)."""
        if self._settings.metered != "auto":
            return
        if self._metered_task is not None and not self._metered_task.done():
            self._metered_again = True  # read once more when this reading ends
            return
        self._metered_task = asyncio.create_task(self._read_metered(), name="connectivity-metered")

    async def _read_metered(self) -> None:
        while True:
            self._metered_again = False
            try:
                metered = await read_nm_metered()
            except Exception:
                log.exception("connectivity.metered_read_failed")
                metered = False
            if metered != self._nm_metered:
                self._nm_metered = metered
                log.info("connectivity.metered", metered=metered)
                self._notify()
            if not self._metered_again:
                return

    def _next_delay(self) -> float | None:
        """Seconds until the next scheduled probe; None = only on request (forced mode)."""
        if self._mode != "auto":
            return None
        if self._state == "online":
            return CONFIRM_DELAY_S if self._failures else self._settings.online_probe_interval_s
        return min(BACKOFF_START_S * 2.0**self._backoff_probes, self._settings.offline_probe_max_s)

    async def _run(self) -> None:
        while True:
            delay = self._next_delay()
            log.debug("connectivity.sleep", state=self._state, next_probe_in_s=delay)
            due = False
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                due = True
            self._wake.clear()
            if not (due or self._probe_requested):
                continue  # woken only to re-plan (a mode change)
            self._probe_requested = False
            epoch = self._mode_epoch
            result = await self._probe()
            self._last_probe = result
            if epoch == self._mode_epoch and self._mode == "auto":
                self._apply(result)

    async def _probe(self) -> ProbeResult:
        assert self._client is not None
        loop = asyncio.get_running_loop()
        started, at = loop.time(), timeutil.now()
        status: int | None = None
        try:
            # httpx's timeout is per phase; this bounds the whole probe (a trickling server).
            async with asyncio.timeout(self._settings.probe_timeout_s):
                response = await self._client.get(self._settings.probe_url)
            status = response.status_code
            outcome, error = classify(status, self._settings.expect_status)
        except (httpx.TransportError, TimeoutError) as exc:
            outcome, error = "failure", error_code(exc)
            log.debug("connectivity.probe_error", error=error, detail=repr(exc))
        except Exception as exc:
            # A bug or an exotic failure must not kill the monitor task and freeze the state.
            outcome, error = "failure", "probe_error"
            log.exception("connectivity.probe_crashed", detail=repr(exc))
        duration_ms = round((loop.time() - started) * 1000)
        log.debug("connectivity.probe", outcome=outcome, status=status, error=error, duration_ms=duration_ms)
        return ProbeResult(at, outcome, status, error, duration_ms)

    def _apply(self, result: ProbeResult) -> None:
        verified, self._verified = self._verified, True
        if result.outcome == "online":
            self._failures = 0
            self._set_state("online")
            return
        if result.outcome == "failure" and self._state == "online" and verified:
            self._failures += 1
            if self._failures < FAILURES_TO_GO_OFFLINE:
                log.info("connectivity.probe_failed_once", error=result.error, status=result.status)
                return
        new_state: State = "portal" if result.outcome == "portal" else "offline"
        if not self._set_state(new_state):
            self._backoff_probes += 1

    def _set_state(self, state: State, *, notify: bool = True) -> bool:
        if state == self._state:
            return False
        old, self._state = self._state, state
        self._since = timeutil.now()
        self._failures = 0
        self._backoff_probes = 0
        if state == "online":
            self._online.set()
        else:
            self._online.clear()
        if state != "unknown":
            self._known.set()
        log.info("connectivity.changed", old=old, new=state, mode=self._mode)
        if notify:
            self._notify()
        return True

    def listen(self, on_change: Callable[[contract.Connectivity], None]) -> None:
        """Also call `on_change(snapshot)` on every change of state or mode."""
        self._listeners.append(on_change)

    def _notify(self) -> None:
        snapshot = self.snapshot()
        for listener in self._listeners:
            try:
                listener(snapshot)
            except Exception:
                # A broken subscriber must not stop the monitor; the state change itself stands.
                log.exception("connectivity.on_change_failed")
