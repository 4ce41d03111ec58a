"""Floods of the agent's listeners (issue 20, item 6): what the owner's status calls get meanwhile.

    python bench/listener_flood.py [--probes 40] [--metrics-held 1100]

Each row is a fresh agent; the floods run in child processes (tests/floods.py), the status
calls (`GET /v1/status`, each on a new connection with a 2 s timeout, one after another) from
this one:
Each agent runs under `prlimit --nofile=1024:1024` (a common hard limit; its socket cap comes
out at 768 connections).
- metrics port: with `[agent] metrics_listen`, another uid (nobody, when run as root) holding N half-sent
  connections to that port;
- socket, reconnecting: one process of the agent's own uid keeping as many half-sent connections
  open on the socket as the agent lets it, reconnecting as soon as one is closed.
Reported: status calls answered 200 of those made (503, no answer within 2 s), their p99, a
scrape of /metrics answered during the flood, and the agent's open descriptors.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
import agentproc
from _harness import percentile, print_notes, print_table, progress
from floods import flooding

TIMEOUT_S = 2.0
NOFILE = 1024


def probe(agent: agentproc.Agent, count: int) -> tuple[str, float]:
    """`count` status calls one after another: how many were answered 200 (and 503, and not at
    all), and the p99 in ms of all of them."""
    answers: Counter[int | None] = Counter()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        answers[agentproc.status_code(agent.socket, timeout=TIMEOUT_S)] += 1
        times.append(1000 * (time.perf_counter() - started))
    said = f"{answers[200]}/{count} (503: {answers[503]}, none: {answers[None]})"
    return said, percentile(sorted(times), 99)


def scrape(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as tcp:
            tcp.sendall(b"GET /metrics HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n")
            return tcp.recv(64).split(b"\r\n")[0].decode() or "closed"
    except OSError as exc:
        return type(exc).__name__


def descriptors(agent: agentproc.Agent) -> int:
    return len(os.listdir(f"/proc/{agent.pid}/fd"))


def free_port() -> int:
    with socket.socket() as probe_sock:
        probe_sock.bind(("127.0.0.1", 0))
        return int(probe_sock.getsockname()[1])


@contextlib.contextmanager
def limited_agent(env: dict[str, str]) -> Iterator[agentproc.Agent]:
    """An agent whose open-file limit is 1,024, soft and hard (its socket cap comes out at 768)."""
    command = agentproc.AGENT_COMMAND
    agentproc.AGENT_COMMAND = ["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--", *command]
    try:
        with agentproc.started_agent(env) as agent:
            yield agent
    finally:
        agentproc.AGENT_COMMAND = command


def metrics_row(args: argparse.Namespace) -> list[object]:
    port = free_port()
    env = {"WAYSTATION_AGENT__METRICS_LISTEN": f"127.0.0.1:{port}"}
    with limited_agent(env) as agent, flooding("hold", port, args.metrics_held, other_uid=True) as held:
        time.sleep(0.5)
        fds = descriptors(agent)
        answered, p99 = probe(agent, args.probes)
        scraped = scrape(port)
    return [f"metrics port, {held} half-sent held", answered, f"{p99:.0f}", scraped, fds]


def reconnect_row(args: argparse.Namespace) -> list[object]:
    with limited_agent({}) as agent, flooding("reconnect", agent.socket, 2000) as held:
        time.sleep(2.0)
        fds = descriptors(agent)
        answered, p99 = probe(agent, args.probes)
    return [f"socket, one same-uid process reconnecting ({held} at first)", answered, f"{p99:.0f}", "-", fds]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--probes", type=int, default=40)
    parser.add_argument("--metrics-held", type=int, default=1100)
    args = parser.parse_args()
    progress("metrics port flood")
    rows = [metrics_row(args)]
    progress("socket reconnect flood")
    rows.append(reconnect_row(args))
    print("## Listener floods (bench/listener_flood.py)")
    print()
    print_table(["flood", "status answered", "status p99 ms", "scrape meanwhile", "agent fds"], rows)
    print_notes(
        f"reproduce: `python bench/listener_flood.py --probes {args.probes} "
        f"--metrics-held {args.metrics_held}`",
        f"floods from uid {os.getuid()} (the metrics flood as nobody when that is 0); "
        f"the agent at nofile {NOFILE}",
        "status: one GET at a time, each on a new connection; "
        f"one not answered counts {TIMEOUT_S:g} s in the p99",
    )


if __name__ == "__main__":
    main()
