"""Wake-ups from the operating system when the network changes (Linux rtnetlink).

The connectivity monitor probes rarely while online and backs off while offline, so without a
hint from the OS it would notice a restored link only at its next scheduled probe. The kernel
multicasts a route-netlink message whenever a link goes up or down, an address comes or goes, or
a route changes. We subscribe to those groups on a raw ``AF_NETLINK`` socket and treat *any*
message as "the network changed, probe now".

Why no dependency (pyroute2 and friends): we never parse a message. The probe is the only judge
of connectivity; netlink just tells us when to ask it. Draining the socket and scheduling one
debounced callback is all that is needed, and the standard library's ``socket`` does that.

On platforms without netlink (macOS, Windows) or when the socket cannot be opened (seccomp,
exotic containers), ``start()`` logs why and returns False; the monitor then relies on probing.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import sys
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

NETLINK_ROUTE = 0
# Multicast groups from <linux/rtnetlink.h>: link state, IPv4/IPv6 addresses, IPv4/IPv6 routes.
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE

# A cable plug or a Wi-Fi roam emits a burst of link, address and route messages within a few
# milliseconds; waiting this long after the first one turns the burst into a single probe.
DEFAULT_DEBOUNCE_S = 0.15


def open_route_socket() -> socket.socket | None:
    """A non-blocking rtnetlink socket subscribed to GROUPS, or None where there is none."""
    if sys.platform != "linux":
        log.info("netlink.unavailable", reason=f"no rtnetlink on {sys.platform}; relying on probes")
        return None
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    except OSError as exc:
        log.warning("netlink.unavailable", reason=f"cannot open socket: {exc.strerror}")
        return None
    try:
        sock.setblocking(False)
        # Port id 0 lets the kernel assign a unique one, so several agents can coexist.
        sock.bind((0, GROUPS))
    except OSError as exc:
        sock.close()
        log.warning("netlink.unavailable", reason=f"cannot bind to route groups: {exc.strerror}")
        return None
    return sock


class NetlinkWatcher:
    """Calls ``on_change()`` on the event loop, debounced, whenever the kernel reports a change."""

    def __init__(self, on_change: Callable[[], None], *, debounce_s: float = DEFAULT_DEBOUNCE_S) -> None:
        self._on_change = on_change
        self._debounce_s = debounce_s
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: asyncio.TimerHandle | None = None

    @property
    def active(self) -> bool:
        return self._sock is not None

    def start(self) -> bool:
        """Start watching on the running loop; False when OS events are unavailable here."""
        sock = open_route_socket()
        if sock is None:
            return False
        loop = asyncio.get_running_loop()
        try:
            loop.add_reader(sock.fileno(), self._on_readable)
        except (NotImplementedError, OSError) as exc:
            # e.g. a Windows proactor loop has no add_reader; probes still work.
            sock.close()
            log.warning("netlink.unavailable", reason=f"event loop cannot watch the socket: {exc!r}")
            return False
        self._sock, self._loop = sock, loop
        log.debug("netlink.watching", groups=hex(GROUPS))
        return True

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._sock = None
        self._loop = None

    def _on_readable(self) -> None:
        if self._sock is None or self._loop is None:
            return
        changed = False
        # Drain everything queued: the content does not matter, and a level-triggered reader
        # left with unread data would call us again at once (a busy loop).
        while True:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # The kernel dropped messages because we fell behind: certainly a change.
                    changed = True
                    continue
                log.warning("netlink.failed", reason=exc.strerror)
                self.close()
                return
            if not data:
                break
            changed = True
        if changed and self._pending is None:
            self._pending = self._loop.call_later(self._debounce_s, self._fire)

    def _fire(self) -> None:
        self._pending = None
        log.debug("netlink.changed")
        self._on_change()
