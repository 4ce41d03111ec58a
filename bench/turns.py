"""Local-model turns through the agent, against llama.cpp's own llama-server and raw
llama-cpp-python, on the same model and the same llama.cpp build, in one run.

    python bench/turns.py [--reps 5] [--max-tokens 128] [--threads N] [--models embedded,tiny]
                          [--streams 4] [--only-streams]

llama-server is built once from the llama.cpp source that the installed llama-cpp-python's sdist
vendors, with install.sh's flags, into ~/.cache/waystation-bench/ (bench/_llama_server.py; the
first run says so and takes several minutes). Two models: the embedded SmolLM2 and a tiny
random-weight GGUF made here (bench/_tiny_gguf.py), whose thousands of tokens a second make any
per-token overhead visible.

Sides, each streamed with the same prompt, max_tokens and temperature 0:
  agent          `POST /v1/turns` `"stream": true` over its socket, at its defaults as a user gets
                 them (`[model] threads = 0`: one per physical core)
  llama-server   `/v1/chat/completions` `"stream": true`, at its defaults (`llama-server -m MODEL`)
  ... @N         both at equal settings: N threads (--threads, default the physical cores),
                 context 4096, batch 512, one slot, the same flash attention
  raw            llama-cpp-python in this process at the equal settings (what the agent wraps)
Repetitions rotate which side goes first, each uses its own prompt (so the prompt is really
evaluated), and the tables show medians; ratios are the median of per-repetition ratios.

  decode tok/s   (tokens - 1) / (last text piece - first text piece)
  TTFT           request sent -> first text piece received
  CPU ms/token   the server process's CPU time over the turn / tokens (this process for raw)

Goal (issue 13): agent / llama-server >= 0.95 for decode tok/s at each side's defaults, and TTFT
within 10 ms. Also, on the embedded model: the agent's cold load, its RSS, and idle unload.

Then --streams N at once (bench/_concurrent.py): the agent with `[model] parallel = N` against
`llama-server -np N`, aggregate tok/s and the slowest first token (issue 23: >= 1.0x and <= 1.5x).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from _concurrent import measure_streams, report_streams
from _harness import cpu_seconds, print_notes, print_table, proc_status, progress, running_agent, uds_client
from _llama_server import build_note, cache_dir, ensure_built, running, threads_in_log
from _tiny_gguf import write_tiny_gguf
from _turn_clients import Run, agent_turn, print_sides, raw_turn, server_turn

from waystation.adapters.models.cpu_cores import physical_cores
from waystation.adapters.models.embedded import default_model_path
from waystation.adapters.models.llamacpp import LlamaOptions

PROMPTS = [
    "Write a short paragraph about lighthouses.",
    "Describe a walk through a forest in autumn.",
    "Explain how a bicycle works to a child.",
    "Write a short story about a cat who learns to swim.",
    "Describe the ocean at night.",
    "Explain why the sky is blue.",
    "Write a letter to a friend about a trip to the mountains.",
    "Describe a busy market in the morning.",
    "Explain how bread is made.",
    "Write a short poem about trains.",
]
IDLE_UNLOAD_S = 3
Turn = Callable[[str, int], Awaitable[Run]]


Measured = tuple[dict[str, list[Run]], list[str]]


async def measure(model: Path, binary: Path, threads: int, reps: int, max_tokens: int) -> Measured:
    """Every side on one model: `reps` streamed turns each, order rotated per repetition; and the
    thread counts each llama-server reported."""
    equal = LlamaOptions(threads=threads)
    flash = "on" if equal.llama_kwargs()["flash_attn"] else "off"
    server_equal = ["-t", str(threads), "-tb", str(threads), "-c", "4096", "-b", "512", "-ub", "512",
                    "-np", "1", "-fa", flash]  # fmt: skip
    env = {"WAYSTATION_MODEL__PATH": str(model)}
    runs: dict[str, list[Run]] = {}
    logs = cache_dir() / "logs"
    logs.mkdir(exist_ok=True)
    from llama_cpp import Llama

    async with (
        running_agent("offline", env) as agent,
        running_agent("offline", {**env, "WAYSTATION_MODEL__THREADS": str(threads)}) as agent_n,
        uds_client(agent.socket) as client,
        uds_client(agent_n.socket) as client_n,
        httpx.AsyncClient(timeout=120) as http,
    ):
        with (
            running(binary, model, [], logs / "default.log") as server,
            running(binary, model, server_equal, logs / "equal.log") as server_n,
        ):
            llm = Llama(model_path=str(model), verbose=False, **equal.llama_kwargs())

            def on_agent(proc_pid: int, c: Any) -> Turn:
                async def turn(prompt: str, n: int) -> Run:
                    return (await agent_turn(c, prompt, n))[0]

                return timed(proc_pid, turn)

            def on_server(pid: int, url: str) -> Turn:
                return timed(pid, lambda prompt, n: server_turn(http, url, prompt, n))

            async def raw(prompt: str, n: int) -> Run:
                return raw_turn(llm, prompt, n)

            sides: dict[str, Turn] = {
                "agent": on_agent(agent.pid, client),
                "llama-server": on_server(server.proc.pid, server.url),
                f"agent @{threads}": on_agent(agent_n.pid, client_n),
                f"llama-server @{threads}": on_server(server_n.proc.pid, server_n.url),
                f"raw @{threads}": raw,
            }
            for turn in sides.values():  # load and warm up each side
                await turn("Say hello.", 8)
            for rep in range(reps):
                names = list(sides)
                names = names[rep % len(names) :] + names[: rep % len(names)]
                for name in names:
                    runs.setdefault(name, []).append(
                        await sides[name](PROMPTS[rep % len(PROMPTS)], max_tokens)
                    )
                progress(
                    f"{model.name} rep {rep + 1}/{reps}: "
                    + ", ".join(
                        f"{n} {r[-1].decode_tps:.0f} tok/s {r[-1].ttft_ms:.0f} ms" for n, r in runs.items()
                    )
                )
            llm.close()
    return runs, [threads_in_log(logs / "default.log"), threads_in_log(logs / "equal.log")]


def timed(pid: int, turn: Turn) -> Turn:
    """The turn, with the server process's CPU time per token recorded."""

    async def run(prompt: str, n: int) -> Run:
        cpu = cpu_seconds(pid)
        result = await turn(prompt, n)
        result.cpu_ms_per_token = (cpu_seconds(pid) - cpu) * 1000 / max(1, result.tokens)
        return result

    return run


def report(label: str, measured: Measured, threads: int, max_tokens: int) -> None:
    runs, server_threads = measured
    median = statistics.median
    print(f"\n### {label}\n")
    print_sides(runs)
    print()
    rows = []
    for a, b, goal in [
        ("agent", "llama-server", "goal >= 0.95, TTFT within 10 ms"),
        (f"agent @{threads}", f"llama-server @{threads}", "equal settings"),
        (f"raw @{threads}", f"llama-server @{threads}", "llama-cpp-python's own cost"),
        (f"agent @{threads}", f"raw @{threads}", "the agent's own cost"),
    ]:
        pairs = list(zip(runs[a], runs[b], strict=True))
        rows.append((
            f"{a} / {b}",
            median(x.decode_tps / y.decode_tps for x, y in pairs),
            median(x.ttft_ms - y.ttft_ms for x, y in pairs),
            median(x.cpu_ms_per_token - y.cpu_ms_per_token for x, y in pairs),
            goal,
        ))  # fmt: skip
    print_table(["ratio (median of pairs)", "decode tok/s", "TTFT +ms", "CPU +ms/token", "note"], rows)
    print_notes(
        f"llama-server reported `{server_threads[0]}` at its defaults, `{server_threads[1]}` equal",
        f"the agent's default threads: {physical_cores()} (physical cores); max_tokens {max_tokens}",
    )


async def footprint(model: Path) -> list[tuple[object, ...]]:
    """The agent's cold load and RSS on the embedded model, and idle unload (a second agent)."""
    env = {"WAYSTATION_MODEL__PATH": str(model)}
    async with running_agent("offline", env) as agent, uds_client(agent.socket) as client:
        before = rss_mb(agent.pid)
        _, done = await agent_turn(client, "Say hello.", 8)
        cold = (await client.get(f"/v1/receipts/{done['receipt_id']}")).json()["cold_load_ms"]
        loaded = rss_mb(agent.pid)
    async with (
        running_agent("offline", {**env, "WAYSTATION_MODEL__IDLE_UNLOAD_S": str(IDLE_UNLOAD_S)}) as agent,
        uds_client(agent.socket) as client,
    ):
        await agent_turn(client, "Say hello.", 8)
        finished = time.perf_counter()
        deadline = finished + IDLE_UNLOAD_S + 15
        while (await client.get("/v1/status")).json()["model"]["loaded"]:
            if time.perf_counter() > deadline:
                raise RuntimeError("the model was not unloaded after idling")
            await asyncio.sleep(0.1)
        unload_s = time.perf_counter() - finished
        await asyncio.sleep(1.0)  # let the allocator hand memory back
        unloaded = rss_mb(agent.pid)
    return [
        ("cold load of the first turn (receipt cold_load_ms)", float(cold)),
        ("RSS started, model not loaded, MB", before),
        ("RSS model loaded, MB", loaded),
        (f"RSS after idle unload ({IDLE_UNLOAD_S} s idle, seen after {unload_s:.1f} s), MB", unloaded),
    ]


def rss_mb(pid: int) -> float:
    return int(proc_status(pid)["VmRSS"].split()[0]) / 1024


async def main_async(args: argparse.Namespace) -> None:
    binary = ensure_built()
    models = {
        "embedded": ("SmolLM2-135M-Instruct Q4_1 (the embedded model)", default_model_path()),
        "tiny": (
            "tiny random-weight GGUF (2 layers, width 64, SmolLM2's tokenizer)",
            write_tiny_gguf(cache_dir() / "tiny.gguf", default_model_path(), cache_dir() / "gguf-py"),
        ),
    }
    results, concurrent = {}, {}
    for key in args.models.split(","):
        label, model = models[key]
        progress(f"== {label}")
        if not args.only_streams:
            results[label] = await measure(model, binary, args.threads, args.reps, args.max_tokens)
        if args.streams > 0:
            concurrent[label] = await measure_streams(
                model, binary, args.streams, args.reps, args.max_tokens, PROMPTS, args.speculative
            )
    want_footprint = "embedded" in args.models and not args.only_streams
    footprint_rows = await footprint(default_model_path()) if want_footprint else []
    for label, measured in results.items():
        report(label, measured, args.threads, args.max_tokens)
    for label, rounds in concurrent.items():
        report_streams(label, args.streams, rounds)
    if footprint_rows:
        print()
        print_table(["agent, embedded model", "value"], footprint_rows)
    print_notes(
        build_note(),
        f"{args.reps} repetitions per side, rotating which side goes first; ratio > 1: the first did better",
        f"reproduce: `python bench/turns.py --reps {args.reps} --max-tokens {args.max_tokens} "
        f"--threads {args.threads} --models {args.models} --streams {args.streams}"
        f"{' --only-streams' if args.only_streams else ''} --speculative {args.speculative}`",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5, help="repetitions per side")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=physical_cores(), help="threads for the equal rows")
    parser.add_argument("--models", default="embedded,tiny", help="embedded, tiny, or both")
    parser.add_argument("--streams", type=int, default=4, help="streams at once afterwards (0: none)")
    parser.add_argument("--only-streams", action="store_true", help="only the streams at once")
    parser.add_argument("--speculative", default="auto", help="[model] speculative of the agent at once")
    args = parser.parse_args()
    if not set(args.models.split(",")) <= {"embedded", "tiny"}:
        sys.exit("--models: embedded, tiny, or embedded,tiny")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
