"""An idle agent: resident memory, CPU and wakeups, sampled from /proc while nothing happens.

    python bench/idle.py [--settle 5] [--duration 20]

The agent starts in a fresh WAYSTATION_HOME, settles, and is then watched for `duration` seconds:
RSS (VmRSS), CPU time (utime + stime of every thread) and voluntary context switches summed over
its threads (each is a sleep that ended: a proxy for wakeups). Reading /proc does not wake it.
Two agents: forced offline (airplane mode), and auto mode kept online by a probe URL on loopback
(a monitor that is online probes every online_probe_interval_s). The baseline, in the same run: an
aiohttp app that only listens on a Unix socket, the floor of the Python + aiohttp stack.

Goal: <= 60 MB RSS and ~0 % CPU when idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from _harness import (
    cpu_seconds,
    helper_server,
    print_notes,
    print_table,
    proc_status,
    progress,
    running_agent,
)


@dataclass
class IdleSample:
    label: str
    rss_mb: float
    rss_max_mb: float
    cpu_pct: float
    wakeups_per_s: float
    main_wakeups_per_s: float
    threads: int
    command: str


def switches(pid: int) -> tuple[int, int]:
    """Voluntary context switches: (all threads, main thread)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            total += int(proc_status(int(task.name))["voluntary_ctxt_switches"])
    return total, int(proc_status(pid)["voluntary_ctxt_switches"])


def rss_mb(pid: int) -> float:
    return int(proc_status(pid)["VmRSS"].split()[0]) / 1024


async def watch(label: str, pid: int, settle: float, duration: float, command: str) -> IdleSample:
    await asyncio.sleep(settle)
    cpu0, (sw0, main0), t0 = cpu_seconds(pid), switches(pid), time.monotonic()
    peak = rss_mb(pid)
    while (elapsed := time.monotonic() - t0) < duration:
        await asyncio.sleep(min(1.0, duration - elapsed))
        peak = max(peak, rss_mb(pid))
    elapsed = time.monotonic() - t0
    cpu1, (sw1, main1) = cpu_seconds(pid), switches(pid)
    return IdleSample(
        label=label,
        rss_mb=rss_mb(pid),
        rss_max_mb=peak,
        cpu_pct=(cpu1 - cpu0) / elapsed * 100,
        wakeups_per_s=(sw1 - sw0) / elapsed,
        main_wakeups_per_s=(main1 - main0) / elapsed,
        threads=int(proc_status(pid)["Threads"]),
        command=command,
    )


@contextlib.asynccontextmanager
async def baseline_server() -> AsyncIterator[int]:
    with (
        tempfile.TemporaryDirectory(prefix="waystation-bench-") as tmp,
        helper_server("baseline", "--uds", str(Path(tmp) / "baseline.sock")) as (proc, _),
    ):
        yield proc.pid


async def main_async(settle: float, duration: float) -> None:
    results = []
    async with baseline_server() as pid:
        results.append(
            await watch("aiohttp app, listening (baseline)", pid, settle, duration, "bench/_servers.py")
        )
    progress(f"{results[-1].label}: {results[-1].rss_mb:.1f} MB")

    async with running_agent("offline") as agent:
        results.append(await watch("agent, forced offline", agent.pid, settle, duration, agent.how))
    progress(f"{results[-1].label}: {results[-1].rss_mb:.1f} MB")

    with helper_server("receiver") as (_, base):
        env = {"WAYSTATION_CONNECTIVITY__PROBE_URL": f"{base}/generate_204"}
        async with running_agent("auto", env) as agent:
            results.append(
                await watch("agent, auto (online via loopback probe)", agent.pid, settle, duration, agent.how)
            )
    progress(f"{results[-1].label}: {results[-1].rss_mb:.1f} MB")

    print_table(
        [
            "process",
            "RSS MB",
            "RSS max MB",
            "CPU %",
            "wakeups/s (all threads)",
            "wakeups/s (main thread)",
            "threads",
        ],
        [
            (r.label, r.rss_mb, r.rss_max_mb, r.cpu_pct, r.wakeups_per_s, r.main_wakeups_per_s, r.threads)
            for r in results
        ],
    )
    print_notes(
        f"settled {settle:g} s, then watched {duration:g} s; wakeups = voluntary context switches"
        " (/proc/PID/task/*/status), CPU = utime + stime (/proc/PID/stat)",
        "goal: <= 60 MB RSS, ~0 % CPU",
        *(f"{r.label}: `{r.command}`" for r in results[1:]),
        f"reproduce: `python bench/idle.py --settle {settle:g} --duration {duration:g}`",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before sampling")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of sampling")
    args = parser.parse_args()
    asyncio.run(main_async(args.settle, args.duration))


if __name__ == "__main__":
    main()
