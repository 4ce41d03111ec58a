"""The connectivity monitor against real HTTP servers on loopback (no mocks of httpx)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from waystation.adapters.connectivity.monitor import ConnectivityMonitor, classify
from waystation.config import ConnectivitySettings
from waystation.errors import InputError
from waystation.testing import until

LOGIN_PAGE = "<html><body><form action='/login'>Accept the terms to use Wi-Fi</form></body></html>"


class ProbeTarget:
    """A loopback HTTP server whose answer the test can change, or that can stop listening."""

    def __init__(self) -> None:
        self.answer = "204"  # 204 | 302 | login | 500 | hang
        self.hits: list[float] = []
        self.port = 0
        app = web.Application()
        app.router.add_get("/generate_204", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        self._site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/generate_204"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(time.monotonic())
        if self.answer == "204":
            return web.Response(status=204)
        if self.answer == "302":
            raise web.HTTPFound("http://portal.example/login")
        if self.answer == "login":
            return web.Response(status=200, text=LOGIN_PAGE, content_type="text/html")
        if self.answer == "hang":
            await asyncio.sleep(30)
        return web.Response(status=500)

    async def setup(self) -> None:
        await self._runner.setup()
        # Reserve a free port once so the server can come back on the same one after stop().
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        await self.start()

    async def start(self) -> None:
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    async def stop(self) -> None:
        """Stop listening: probes now get 'connection refused'."""
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def close(self) -> None:
        await self._runner.cleanup()


@pytest.fixture
async def target() -> AsyncIterator[ProbeTarget]:
    t = ProbeTarget()
    await t.setup()
    try:
        yield t
    finally:
        await t.close()


def settings(url: str, **kw: Any) -> ConnectivitySettings:
    values: dict[str, Any] = {
        "probe_url": url,
        "probe_timeout_s": 1.0,
        "online_probe_interval_s": 300.0,
        "offline_probe_max_s": 0.5,
    }
    values.update(kw)
    return ConnectivitySettings(**values)


def last_probe(monitor: ConnectivityMonitor) -> dict[str, Any]:
    probe = monitor.snapshot()["last_probe"]
    return probe if isinstance(probe, dict) else {}


def state(monitor: ConnectivityMonitor) -> str:
    # A function, not the property, so mypy does not narrow the state across awaits.
    return monitor.state


class Recorder:
    def __init__(self) -> None:
        self.snapshots: list[dict[str, object]] = []

    def __call__(self, snapshot: dict[str, object]) -> None:
        self.snapshots.append(snapshot)

    @property
    def states(self) -> list[object]:
        return [s["state"] for s in self.snapshots]


def test_classify_is_pure() -> None:
    assert classify(204, 204) == ("online", None)
    assert classify(302, 204)[0] == "portal"
    assert classify(200, 204)[0] == "portal"
    assert classify(200, 200) == ("online", None)
    assert classify(503, 204)[0] == "failure"


async def test_online_on_204(target: ProbeTarget) -> None:
    rec = Recorder()
    monitor = ConnectivityMonitor(settings(target.url), on_change=rec, watch_os_events=False)
    assert monitor.state == "unknown"
    async with monitor:
        await asyncio.wait_for(monitor.wait_online(), 2)
        snap = monitor.snapshot()
    assert snap["state"] == "online" and snap["mode"] == "auto"
    assert isinstance(snap["since"], str) and snap["since"].endswith("Z")
    probe = snap["last_probe"]
    assert isinstance(probe, dict)
    assert probe["ok"] is True and probe["status"] == 204 and probe["error"] is None
    assert isinstance(probe["duration_ms"], int) and isinstance(probe["at"], str)
    assert rec.states == ["online"]


@pytest.mark.parametrize("answer", ["302", "login"])
async def test_captive_portal(target: ProbeTarget, answer: str) -> None:
    target.answer = answer
    async with ConnectivityMonitor(settings(target.url), watch_os_events=False) as monitor:
        await until(lambda: monitor.state == "portal")
        probe = monitor.snapshot()["last_probe"]
        assert isinstance(probe, dict)
        assert probe["ok"] is False and probe["status"] == (302 if answer == "302" else 200)
        assert not monitor.subscribe_online().is_set()
        # The user logs in to the portal: the next (backed-off) probe sees the internet.
        target.answer = "204"
        await asyncio.wait_for(monitor.wait_online(), 3)


async def test_200_is_online_when_expected(target: ProbeTarget) -> None:
    target.answer = "login"
    cfg = settings(target.url, expect_status=200)
    async with ConnectivityMonitor(cfg, watch_os_events=False) as monitor:
        await asyncio.wait_for(monitor.wait_online(), 2)


async def test_unexpected_status_and_refused_are_failures(target: ProbeTarget) -> None:
    target.answer = "500"
    async with ConnectivityMonitor(settings(target.url), watch_os_events=False) as monitor:
        await until(lambda: monitor.state == "offline")
        probe = monitor.snapshot()["last_probe"]
        assert isinstance(probe, dict) and probe["status"] == 500 and probe["error"] == "unexpected_status"
        await target.stop()
        n = len(target.hits)
        monitor.probe_soon()
        await until(lambda: last_probe(monitor).get("error") == "connect_error")
        assert len(target.hits) == n and monitor.state == "offline"


async def test_timeout_is_a_failure(target: ProbeTarget) -> None:
    target.answer = "hang"
    cfg = settings(target.url, probe_timeout_s=0.3)
    async with ConnectivityMonitor(cfg, watch_os_events=False) as monitor:
        await until(lambda: monitor.state == "offline")
        probe = monitor.snapshot()["last_probe"]
        assert isinstance(probe, dict) and probe["error"] == "timeout" and probe["status"] is None
        # Leaving while a probe hangs is quick: the probe task is cancelled.
        started = time.monotonic()
    assert time.monotonic() - started < 1.0


async def test_one_failure_while_online_does_not_flip(target: ProbeTarget) -> None:
    rec = Recorder()
    async with ConnectivityMonitor(settings(target.url), on_change=rec, watch_os_events=False) as monitor:
        await asyncio.wait_for(monitor.wait_online(), 2)
        await target.stop()
        monitor.report_network_error()
        await until(lambda: last_probe(monitor).get("ok") is False)
        assert monitor.state == "online"
        # The target is back before the quick confirming probe (~1 s later): no flap at all.
        await target.start()
        await asyncio.sleep(1.5)
        assert last_probe(monitor)["ok"] is True
        assert monitor.state == "online"
    assert rec.states == ["online"]


async def test_two_failures_go_offline_second_probe_is_quick(target: ProbeTarget) -> None:
    async with ConnectivityMonitor(settings(target.url), watch_os_events=False) as monitor:
        await asyncio.wait_for(monitor.wait_online(), 2)
        await target.stop()
        failed_at = time.monotonic()
        monitor.report_network_error()
        await until(lambda: last_probe(monitor).get("ok") is False)
        assert monitor.state == "online"
        took = await until(lambda: state(monitor) == "offline", within=3)
        # The confirming probe comes ~1 s later, not after online_probe_interval_s (300 s).
        assert 0.5 < time.monotonic() - failed_at < 2.5, took
        assert not monitor.subscribe_online().is_set()


async def test_forced_modes_switch_at_once_and_ignore_probes(target: ProbeTarget) -> None:
    rec = Recorder()
    async with ConnectivityMonitor(settings(target.url), on_change=rec, watch_os_events=False) as monitor:
        await asyncio.wait_for(monitor.wait_online(), 2)
        monitor.set_mode("offline")
        # Synchronously: state, event and on_change all reflect the forced mode before any await.
        assert monitor.state == "offline" and monitor.mode == "offline"
        assert rec.snapshots[-1]["state"] == "offline" and rec.snapshots[-1]["mode"] == "offline"
        assert not monitor.subscribe_online().is_set()
        n = len(target.hits)
        monitor.probe_soon()  # the probe runs and is recorded, but does not decide the state
        await until(lambda: len(target.hits) == n + 1)
        await asyncio.sleep(0.1)
        assert state(monitor) == "offline"
        assert last_probe(monitor)["ok"] is True

        await target.stop()
        monitor.set_mode("online")
        assert state(monitor) == "online" and monitor.subscribe_online().is_set()
        monitor.report_network_error()
        monitor.report_network_error()
        await asyncio.sleep(1.5)
        assert state(monitor) == "online"
        assert last_probe(monitor)["ok"] is False
    assert rec.states == ["online", "offline", "online"]


async def test_forced_mode_from_config_does_not_probe(target: ProbeTarget) -> None:
    cfg = settings(target.url, mode="offline")
    async with ConnectivityMonitor(cfg, watch_os_events=False) as monitor:
        assert monitor.state == "offline" and monitor.mode == "offline"
        await asyncio.sleep(1.2)  # longer than the offline backoff would wait
        assert target.hits == []
        monitor.set_mode("auto")
        started = time.monotonic()
        await asyncio.wait_for(monitor.wait_online(), 2)
        assert time.monotonic() - started < 0.5  # probed at once, not after a backoff
        assert len(target.hits) == 1


async def test_auto_after_forced_online_trusts_the_first_probe(target: ProbeTarget) -> None:
    cfg = settings(target.url, mode="online", offline_probe_max_s=10)
    async with ConnectivityMonitor(cfg, watch_os_events=False) as monitor:
        await target.stop()
        monitor.set_mode("auto")
        # The forced "online" was never verified: one failed probe is enough to go offline.
        took = await until(lambda: monitor.state == "offline", within=2)
        assert took < 0.5


async def test_report_network_error_probes_at_once(target: ProbeTarget) -> None:
    async with ConnectivityMonitor(settings(target.url), watch_os_events=False) as monitor:
        await asyncio.wait_for(monitor.wait_online(), 2)
        await asyncio.sleep(0.5)
        assert len(target.hits) == 1  # idle while online: no probe before the 300 s interval
        asked = time.monotonic()
        monitor.report_network_error()
        await until(lambda: len(target.hits) == 2, within=1)
        assert target.hits[1] - asked < 0.3


async def test_on_change_on_each_transition(target: ProbeTarget) -> None:
    rec = Recorder()
    async with ConnectivityMonitor(settings(target.url), on_change=rec, watch_os_events=False) as monitor:
        await until(lambda: monitor.state == "online")
        target.answer = "302"
        monitor.probe_soon()
        await until(lambda: monitor.state == "portal")
        target.answer = "204"
        monitor.probe_soon()
        await until(lambda: monitor.state == "online")
        await target.stop()
        monitor.probe_soon()
        await until(lambda: monitor.state == "offline")
        await target.start()
        await until(lambda: monitor.state == "online")
    assert rec.states == ["online", "portal", "online", "offline", "online"]
    sinces = [str(s["since"]) for s in rec.snapshots]
    assert sinces == sorted(sinces)


async def test_on_change_failure_does_not_stop_the_monitor(target: ProbeTarget) -> None:
    def broken(snapshot: dict[str, object]) -> None:
        raise RuntimeError("subscriber bug")

    async with ConnectivityMonitor(settings(target.url), on_change=broken, watch_os_events=False) as monitor:
        await asyncio.wait_for(monitor.wait_online(), 2)
        target.answer = "302"
        monitor.probe_soon()
        await until(lambda: monitor.state == "portal")


async def test_wait_online_returns_promptly_when_target_returns(target: ProbeTarget) -> None:
    seen_online_at: list[float] = []

    def on_change(snapshot: dict[str, object]) -> None:
        if snapshot["state"] == "online":
            seen_online_at.append(time.monotonic())

    await target.stop()
    async with ConnectivityMonitor(settings(target.url), on_change=on_change, watch_os_events=False) as m:
        await until(lambda: m.state == "offline")
        waiter = asyncio.create_task(m.wait_online())
        await asyncio.sleep(1.0)  # the backoff is now at its 0.5 s cap
        assert not waiter.done()
        await target.start()
        back = time.monotonic()
        await asyncio.wait_for(waiter, 2)
        returned = time.monotonic()
    assert returned - back < 1.0
    assert len(seen_online_at) == 1 and seen_online_at[0] <= returned


async def test_offline_backoff_grows_and_is_capped(target: ProbeTarget) -> None:
    await target.stop()
    cfg = settings(target.url, offline_probe_max_s=2.0)
    async with ConnectivityMonitor(cfg, watch_os_events=False) as monitor:
        await until(lambda: monitor.state == "offline")
        await target.start()
        target.answer = "500"  # answers, so each probe is counted, and still a failure
        await asyncio.sleep(4.5)
    gaps = [b - a for a, b in zip(target.hits, target.hits[1:], strict=False)]
    assert 2 <= len(target.hits) <= 4, target.hits  # 1 s, 2 s, 2 s ... not a busy loop
    assert all(g > 0.8 for g in gaps), gaps


async def test_set_mode_rejects_unknown(target: ProbeTarget) -> None:
    monitor = ConnectivityMonitor(settings(target.url), watch_os_events=False)
    with pytest.raises(InputError):
        monitor.set_mode("airplane")  # type: ignore[arg-type]


async def test_with_os_events_starts_and_stops_quickly(target: ProbeTarget) -> None:
    started = time.monotonic()
    async with ConnectivityMonitor(settings(target.url)) as monitor:
        await asyncio.wait_for(monitor.wait_online(), 2)
    assert time.monotonic() - started < 1.5
