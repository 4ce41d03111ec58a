"""Several streams at once, for bench/turns.py: the agent (`[model] parallel`) against
llama-server with as many slots (`-np N`), each at its defaults otherwise.

A round sends N streamed turns at the same moment, each its own prompt, and waits for them all:
  aggregate tok/s    the tokens of all N / (last stream's end - the round's start)
  slowest TTFT       the longest time to first token among the N (what the last client waits)
The agent with `parallel = 0` (one sequence at a time: how it served several clients before) is
measured too, for reference. Rounds rotate which side goes first; the ratios are the median of
per-round ratios.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from _harness import print_notes, print_table, progress, running_agent, uds_client
from _llama_server import cache_dir, running, threads_in_log
from _turn_clients import Run, agent_turn, server_turn

Turn = Callable[[str, int], Awaitable[Run]]


@dataclass
class Round:
    aggregate_tps: float
    slowest_ttft_ms: float
    tokens: int


async def one_round(turn: Turn, prompts: list[str], max_tokens: int) -> Round:
    started = time.perf_counter()
    runs = await asyncio.gather(*(turn(p, max_tokens) for p in prompts))
    ended = time.perf_counter()
    tokens = sum(r.tokens for r in runs)
    return Round(tokens / (ended - started), max(r.ttft_ms for r in runs), tokens)


async def measure_streams(
    model: Path, binary: Path, streams: int, reps: int, max_tokens: int, prompts: list[str], speculative: str
) -> tuple[dict[str, list[Round]], str]:
    env = {
        "WAYSTATION_MODEL__PATH": str(model),
        "WAYSTATION_MODEL__PARALLEL": str(streams),
        "WAYSTATION_MODEL__SPECULATIVE": speculative,
    }
    serial_env = {**env, "WAYSTATION_MODEL__PARALLEL": "0"}
    log = cache_dir() / "logs" / f"np{streams}.log"
    log.parent.mkdir(exist_ok=True)
    rounds: dict[str, list[Round]] = {}
    async with (
        running_agent("offline", env) as agent,
        running_agent("offline", serial_env) as serial,
        uds_client(agent.socket, streams) as client,
        uds_client(serial.socket, streams) as serial_client,
        httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=streams * 2)) as http,
    ):
        with running(binary, model, ["-np", str(streams)], log) as server:

            def on_agent(c: httpx.AsyncClient) -> Turn:
                async def turn(prompt: str, n: int) -> Run:
                    return (await agent_turn(c, prompt, n))[0]

                return turn

            sides: dict[str, Turn] = {
                f"agent parallel={streams}": on_agent(client),
                f"llama-server -np {streams}": lambda p, n: server_turn(http, server.url, p, n),
                "agent parallel=0": on_agent(serial_client),
            }
            for turn in sides.values():  # load and warm up each side
                await one_round(turn, ["Say hello."] * streams, 8)
            for rep in range(reps):
                names = list(sides)
                names = names[rep % len(names) :] + names[: rep % len(names)]
                batch = [prompts[(rep * streams + i) % len(prompts)] for i in range(streams)]
                for name in names:
                    rounds.setdefault(name, []).append(await one_round(sides[name], batch, max_tokens))
                progress(
                    f"{model.name} {streams} streams, round {rep + 1}/{reps}: "
                    + ", ".join(
                        f"{n} {r[-1].aggregate_tps:.0f} tok/s, slowest TTFT {r[-1].slowest_ttft_ms:.0f} ms"
                        for n, r in rounds.items()
                    )
                )
    return rounds, threads_in_log(log)


def report_streams(label: str, streams: int, measured: tuple[dict[str, list[Round]], str]) -> None:
    rounds, server_threads = measured
    median = statistics.median
    agent, server, serial = f"agent parallel={streams}", f"llama-server -np {streams}", "agent parallel=0"
    print(f"\n### {label}: {streams} streams at once\n")
    print_table(
        ["side (median of rounds)", "aggregate tok/s", "slowest TTFT ms", "tokens a round"],
        [(n, median(r.aggregate_tps for r in rs), median(r.slowest_ttft_ms for r in rs),
          median(r.tokens for r in rs)) for n, rs in rounds.items()],
    )  # fmt: skip
    print()
    rows = []
    for a, b, goal in [
        (agent, server, "goal: aggregate >= 1.0, slowest TTFT <= 1.5"),
        (serial, server, "one sequence at a time (before issue 23)"),
        (agent, serial, "what batching gives the agent"),
    ]:
        pairs = list(zip(rounds[a], rounds[b], strict=True))
        rows.append((
            f"{a} / {b}",
            median(x.aggregate_tps / y.aggregate_tps for x, y in pairs),
            median(x.slowest_ttft_ms / y.slowest_ttft_ms for x, y in pairs),
            goal,
        ))  # fmt: skip
    print_table(["ratio (median of rounds)", "aggregate tok/s", "slowest TTFT", "note"], rows)
    print_notes(f"llama-server `-np {streams}` at its defaults otherwise reported `{server_threads}`")
