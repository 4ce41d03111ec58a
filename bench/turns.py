"""Local-model turns through the agent, against raw llama-cpp-python on the same model, in one run.

    python bench/turns.py [--reps 9] [--max-tokens 64]

Through the agent: `POST /v1/turns` with `"stream": true, "tool_choice": "none"` over the Unix
socket, timed by the client as each SSE `token` event arrives. Raw: `Llama(...)` in this process,
`create_chat_completion(stream=True)` with the same model, prompt, max_tokens, temperature 0,
n_ctx (llamacpp.DEFAULT_CONTEXT) and thread count (llama-cpp-python's default, as the agent
uses). Repetitions alternate which side goes first, each uses its own prompt (so the prompt is
really evaluated, not served from the KV cache of the previous call), and the table shows medians.

  decode tok/s   (tokens - 1) / (last token - first token): the generation loop itself
  end-to-end     tokens / (request sent -> stream ended): TTFT, decode, receipt and HTTP included
  TTFT           request sent (or call made) -> first text piece received

Goal: agent / raw >= 0.98 for tokens per second. Also: cold load (the agent's receipt
`cold_load_ms` of its first turn vs constructing `Llama`), and the agent's RSS before the model
is loaded, with it loaded, and after idle unload (a second agent, WAYSTATION_MODEL__IDLE_UNLOAD_S=3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _harness import cpu_seconds, print_notes, print_table, proc_status, progress, running_agent, uds_client

from waystation.adapters.models.embedded import default_model_path
from waystation.adapters.models.llamacpp import DEFAULT_CONTEXT

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


@dataclass
class Run:
    ttft_ms: float
    decode_tps: float
    e2e_tps: float
    tokens: int
    text: str
    cpu_ms_per_token: float = float("nan")


def summarize(started: float, stamps: list[float], ended: float, pieces: list[str]) -> Run:
    n = len(stamps)
    decode = (n - 1) / (stamps[-1] - stamps[0]) if n > 1 and stamps[-1] > stamps[0] else float("nan")
    return Run(
        ttft_ms=(stamps[0] - started) * 1000 if stamps else float("nan"),
        decode_tps=decode,
        e2e_tps=n / (ended - started),
        tokens=n,
        text="".join(pieces),
    )


async def agent_turn(client: Any, prompt: str, max_tokens: int) -> tuple[Run, dict[str, Any]]:
    body = {"prompt": prompt, "stream": True, "tool_choice": "none", "max_tokens": max_tokens}
    stamps: list[float] = []
    pieces: list[str] = []
    done: dict[str, Any] | None = None
    event = ""
    started = time.perf_counter()
    async with client.stream("POST", "/v1/turns", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"POST /v1/turns: {response.status_code} {await response.aread()!r}")
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if event == "token":
                    stamps.append(time.perf_counter())
                    pieces.append(data["text"])
                elif event == "done":
                    done = data
                elif event == "error":
                    raise RuntimeError(f"the turn failed: {data}")
    ended = time.perf_counter()
    if done is None:
        raise RuntimeError("the stream ended without a done event")
    if done["usage"]["completion_tokens"] != len(stamps):
        progress(f"note: {done['usage']['completion_tokens']} tokens counted, {len(stamps)} pieces seen")
    return summarize(started, stamps, ended, pieces), done


def raw_turn(llm: Any, prompt: str, max_tokens: int) -> Run:
    stamps: list[float] = []
    pieces: list[str] = []
    cpu = time.process_time()
    started = time.perf_counter()
    for chunk in llm.create_chat_completion(
        messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0.0, stream=True
    ):
        content = chunk["choices"][0]["delta"].get("content")
        if content:
            stamps.append(time.perf_counter())
            pieces.append(content)
    run = summarize(started, stamps, time.perf_counter(), pieces)
    run.cpu_ms_per_token = (time.process_time() - cpu) * 1000 / max(1, run.tokens)
    return run


def rss_mb(pid: int) -> float:
    return int(proc_status(pid)["VmRSS"].split()[0]) / 1024


def raw_cold_load_in_fresh_process(model: Path) -> float:
    """Milliseconds to import llama_cpp and construct Llama in a new interpreter: what the agent's
    first turn pays too (it imports llama_cpp only when it first loads a model)."""
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "from llama_cpp import Llama\n"
        f"Llama(model_path={str(model)!r}, n_ctx={DEFAULT_CONTEXT}, verbose=False)\n"
        "print((time.perf_counter() - t) * 1000)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


async def receipt(client: Any, receipt_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = (await client.get(f"/v1/receipts/{receipt_id}")).json()
    return answer


async def model_loaded(client: Any) -> bool:
    return bool((await client.get("/v1/status")).json()["model"]["loaded"])


async def compare(reps: int, max_tokens: int, model: Path) -> None:
    from llama_cpp import Llama

    agent_runs: list[Run] = []
    raw_runs: list[Run] = []
    reloads = 0
    async with running_agent("offline") as agent, uds_client(agent.socket) as client:
        progress(f"agent pid {agent.pid}: warming up")
        rss_before = rss_mb(agent.pid)
        _, first = await agent_turn(client, "Say hello.", 8)
        agent_cold_ms = (await receipt(client, first["receipt_id"]))["cold_load_ms"]

        started = time.perf_counter()
        llm = Llama(model_path=str(model), n_ctx=DEFAULT_CONTEXT, verbose=False)
        raw_cold_ms = (time.perf_counter() - started) * 1000
        threads = llm.n_threads
        raw_turn(llm, "Say hello.", 8)

        for rep in range(reps):
            prompt = PROMPTS[rep % len(PROMPTS)]
            order = ("agent", "raw") if rep % 2 == 0 else ("raw", "agent")
            for side in order:
                if side == "agent":
                    cpu = cpu_seconds(agent.pid)
                    run, done = await agent_turn(client, prompt, max_tokens)
                    run.cpu_ms_per_token = (cpu_seconds(agent.pid) - cpu) * 1000 / max(1, run.tokens)
                    if (await receipt(client, done["receipt_id"]))["cold_load_ms"] is not None:
                        reloads += 1
                    agent_runs.append(run)
                else:
                    raw_runs.append(raw_turn(llm, prompt, max_tokens))
            a, r = agent_runs[-1], raw_runs[-1]
            progress(
                f"rep {rep + 1}/{reps}: agent {a.decode_tps:.1f} tok/s, TTFT {a.ttft_ms:.0f} ms "
                f"({a.tokens} tok) | raw {r.decode_tps:.1f} tok/s, TTFT {r.ttft_ms:.0f} ms ({r.tokens} tok)"
            )
        rss_loaded = rss_mb(agent.pid)
        llm.close()
        how_agent = agent.how

    progress("raw cold load in a fresh interpreter")
    raw_cold_fresh_ms = raw_cold_load_in_fresh_process(model)
    progress("second agent: idle unload")
    unload = await idle_unload()

    def row(label: str, attr: str, higher_is_better: bool, note: str) -> tuple[object, ...]:
        """Medians of each side; the ratio of the medians and the median of per-repetition ratios,
        both oriented so that 1.0 is parity and more than 1.0 means the agent did better."""
        agent_median = statistics.median(getattr(x, attr) for x in agent_runs)
        raw_median = statistics.median(getattr(x, attr) for x in raw_runs)
        pairs = [(getattr(a, attr), getattr(r, attr)) for a, r in zip(agent_runs, raw_runs, strict=True)]
        if higher_is_better:
            return (
                label,
                agent_median,
                raw_median,
                agent_median / raw_median,
                statistics.median(a / r for a, r in pairs),
                note,
            )
        return (label, agent_median, raw_median, raw_median / agent_median,
                statistics.median(r / a for a, r in pairs), note)  # fmt: skip

    same = sum(a.text == r.text for a, r in zip(agent_runs, raw_runs, strict=True))
    rows: list[tuple[object, ...]] = [
        row("decode tok/s", "decode_tps", True, "goal >= 0.98"),
        row("end-to-end tok/s", "e2e_tps", True, "goal >= 0.98; includes TTFT, receipt, HTTP"),
        row("TTFT ms", "ttft_ms", False, "raw / agent"),
        row("CPU ms per token", "cpu_ms_per_token", False, "whole turn; agent process vs this one"),
        row("completion tokens", "tokens", True, f"max_tokens {max_tokens}"),
        ("cold load ms", float(agent_cold_ms), raw_cold_fresh_ms, raw_cold_fresh_ms / agent_cold_ms, "-",
         "agent: cold_load_ms of its first turn; raw: import llama_cpp + Llama(...), new process"),
        ("cold load ms, warm import", float(agent_cold_ms), raw_cold_ms, raw_cold_ms / agent_cold_ms, "-",
         "raw: Llama(...) with llama_cpp already imported"),
    ]  # fmt: skip
    print_table(["measure (median)", "agent", "raw llama-cpp-python", "ratio", "paired ratio", "note"], rows)
    print()
    print_table(
        ["agent RSS", "MB"],
        [
            ("started, model not loaded yet", rss_before),
            (f"after {reps * 2 + 1} turns, model loaded", rss_loaded),
            ("second agent, model loaded", unload["loaded"]),
            (f"second agent, after idle unload ({IDLE_UNLOAD_S} s)", unload["unloaded"]),
        ],
    )
    print_notes(
        f"model: {model.name}; n_ctx {DEFAULT_CONTEXT}; threads {threads} (llama-cpp-python's default, "
        "both sides); temperature 0; streaming",
        f"{reps} repetitions, alternating which side goes first, one prompt per repetition; medians;"
        " ratio > 1 means the agent did better, paired ratio = median of per-repetition ratios",
        f"greedy texts identical in {same}/{reps} repetitions",
        f"agent turns that reloaded the model mid-run: {reloads} (should be 0)",
        f"idle unload seen {unload['unload_s']:.1f} s after the turn (WAYSTATION_MODEL__IDLE_UNLOAD_S="
        f"{IDLE_UNLOAD_S})",
        f"agent: `{how_agent}`",
        f"reproduce: `python bench/turns.py --reps {reps} --max-tokens {max_tokens}`",
    )


async def idle_unload() -> dict[str, float]:
    env = {"WAYSTATION_MODEL__IDLE_UNLOAD_S": str(IDLE_UNLOAD_S)}
    async with running_agent("offline", env) as agent, uds_client(agent.socket) as client:
        await agent_turn(client, "Say hello.", 8)
        finished = time.perf_counter()
        loaded = rss_mb(agent.pid)
        if not await model_loaded(client):
            raise RuntimeError("the model is not loaded right after a turn")
        deadline = finished + IDLE_UNLOAD_S + 15
        while await model_loaded(client):
            if time.perf_counter() > deadline:
                raise RuntimeError("the model was not unloaded after idling")
            await asyncio.sleep(0.1)
        unload_s = time.perf_counter() - finished
        await asyncio.sleep(1.0)  # let the allocator hand memory back
        return {"loaded": loaded, "unloaded": rss_mb(agent.pid), "unload_s": unload_s}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=9, help="repetitions per side")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: the embedded model)")
    args = parser.parse_args()
    asyncio.run(compare(args.reps, args.max_tokens, args.model or default_model_path()))


if __name__ == "__main__":
    main()
