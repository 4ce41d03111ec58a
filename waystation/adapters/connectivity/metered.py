"""Whether the connection is metered, as NetworkManager says (its global ``Metered`` property).

One ``busctl`` call, bounded by a timeout. Anything short of a clear answer (no busctl, no system
bus, no NetworkManager, an error, an odd reply) counts as not metered.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

log = structlog.get_logger(__name__)

BUSCTL_TIMEOUT_S = 2.0
BUSCTL_ARGS = (
    "get-property",
    "org.freedesktop.NetworkManager",
    "/org/freedesktop/NetworkManager",
    "org.freedesktop.NetworkManager",
    "Metered",
)
# NMMetered: 0 unknown, 1 yes, 2 no, 3 guess-yes, 4 guess-no.
METERED_VALUES = frozenset({1, 3})


def parse_metered(output: str) -> bool:
    """``u 1`` or ``u 3`` (NM_METERED_YES / GUESS_YES) -> True; anything else -> False."""
    parts = output.split()
    if len(parts) != 2 or parts[0] != "u":
        return False
    try:
        return int(parts[1]) in METERED_VALUES
    except ValueError:
        return False


async def read_nm_metered(timeout_s: float = BUSCTL_TIMEOUT_S) -> bool:
    """Ask NetworkManager over D-Bus (via busctl) whether the connection is metered."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "busctl",
            *BUSCTL_ARGS,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:  # no busctl on this system
        log.debug("metered.busctl_unavailable", error=repr(exc))
        return False
    try:
        async with asyncio.timeout(timeout_s):
            stdout, _ = await proc.communicate()
    except TimeoutError:
        log.debug("metered.busctl_timeout")
        return False
    finally:
        # On a timeout or a cancellation (the monitor closing), never leave the child behind.
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
    if proc.returncode != 0:
        return False
    return parse_metered(stdout.decode(errors="replace"))
