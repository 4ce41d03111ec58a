"""Resuming a parked turn from its saved model state (`[model] saved_state_mb`), in one run.

    python bench/resume.py [--reps 3] [--context-tokens 2000]

A parked turn on the embedded SmolLM2 (`[model] parallel = 4`): a long system prompt and earlier
conversation (about --context-tokens), a tool call, and a short tool result; the resumed answer's
time to first token (first streamed piece after the request, the model loaded and warm) in
three ways, each in a fresh child process:
  cold           no saved state: the whole prompt is evaluated
  same process   the turn parked in this process (its prefix kept: the park's save job), then
                 another conversation took the sequence slot, so the resumption restores the
                 state from disk
  after kill -9  the turn parked in a process killed with SIGKILL once the state was written;
                 a new process resumes it (the state read from disk)
Goal (issue 23): restored <= 15 % of cold, after kill -9 too. Replies are compared with the cold
one: the cold prompt is evaluated in the batches a restoration gives (resume_state.split_point),
as llama.cpp's sums depend on them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import print_notes, print_table, progress

from waystation.adapters.models.base import GenerationRequest
from waystation.adapters.models.embedded import default_model_path
from waystation.adapters.models.llamacpp import LlamaCppBackend, LlamaOptions

FACTS = (
    "Port Elling's harbour was built in 1852. Its lighthouse on the north pier is painted red and "
    "white. Ferries leave for the islands every morning at seven; the fish market opens at six on "
    "weekdays and at eight on Saturdays. The harbour master's office is next to the customs house. "
)
EARLIER = [
    ("When was the harbour built?", "In 1852."),
    ("What colour is the lighthouse?", "Red and white."),
    ("When does the fish market open on Saturdays?", "At eight."),
]
CALL = {"id": "call_1", "type": "function", "function": {"name": "web_fetch", "arguments": '{"url": "x"}'}}


def conversation(context_tokens: int, result: str) -> list[dict[str, Any]]:
    system = "You are the harbour office's assistant. " + FACTS * max(1, context_tokens // 60)
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for question, answer in EARLIER:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    messages += [
        {"role": "user", "content": "Fetch http://example.com/ferry and tell me when the ferry leaves."},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]
    return messages


def backend(states: Path | None) -> LlamaCppBackend:
    options = LlamaOptions(parallel=4, saved_state_mb=1024 if states else 0)
    return LlamaCppBackend(str(default_model_path()), options=options, states_dir=states)


async def say_hi(b: LlamaCppBackend, text: str = "Hi.") -> None:
    await b.generate(GenerationRequest([{"role": "user", "content": text}], max_tokens=1))


async def resumed(b: LlamaCppBackend, context_tokens: int) -> dict[str, Any]:
    messages = conversation(context_tokens, "Ferry timetable: the island ferry leaves at 7:00.")
    stamps: list[float] = []
    started = time.perf_counter()
    generation = await b.generate(
        GenerationRequest(messages, tool_choice="none", max_tokens=16),
        lambda _piece: stamps.append(time.perf_counter()),
    )
    return {
        "ttft_s": stamps[0] - started if stamps else float("nan"),
        "prompt_tokens": generation.prompt_tokens,
        "text": generation.text,
        "restored": b.state_counts[1],
    }


async def child(mode: str, states: Path, context_tokens: int) -> None:
    """One side, in its own process; its result as one JSON line on stdout."""
    b = backend(None if mode == "cold" else states)
    await say_hi(b)  # loaded and warm: the time measured is the prompt's, not the load's
    parked = conversation(context_tokens, '{"status": "deferred", "task_id": "t_1"}')
    if mode in ("park", "same"):
        started = time.perf_counter()
        await b.keep_for_resume(GenerationRequest(parked, tool_choice="none"))
        await b.saved()
        saved_s = time.perf_counter() - started
        if mode == "park":
            print(json.dumps({"saved_s": saved_s}), flush=True)
            await asyncio.sleep(3600)  # killed with SIGKILL here
        # Other conversations at once take every sequence slot, the one that held the prefix too.
        await asyncio.gather(*(say_hi(b, f"Tell me about the number {n}.") for n in range(4)))
    result = await resumed(b, context_tokens)
    await b.close()
    print(json.dumps(result), flush=True)


def run_child(mode: str, states: Path, context_tokens: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, "--states", str(states)]
    out = subprocess.run(
        [*command, "--context-tokens", str(context_tokens)], capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def park_and_kill(states: Path, context_tokens: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", "park", "--states", str(states)]
    proc = subprocess.Popen(
        [*command, "--context-tokens", str(context_tokens)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    while line and not line.startswith("{"):  # (the agent's log lines come first)
        line = proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    return dict(json.loads(line))


def main_parent(reps: int, context_tokens: int) -> None:
    runs: dict[str, list[dict[str, Any]]] = {"cold": [], "same process": [], "after kill -9": []}
    saves: list[float] = []
    for rep in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            runs["cold"].append(run_child("cold", Path(tmp) / "none", context_tokens))
        with tempfile.TemporaryDirectory() as tmp:
            runs["same process"].append(run_child("same", Path(tmp), context_tokens))
        with tempfile.TemporaryDirectory() as tmp:
            saves.append(park_and_kill(Path(tmp), context_tokens)["saved_s"])
            runs["after kill -9"].append(run_child("resume", Path(tmp), context_tokens))
        progress(f"rep {rep + 1}/{reps}")
    median = statistics.median
    cold = [r["ttft_s"] for r in runs["cold"]]
    rows = []
    for side, results in runs.items():
        ttft = [r["ttft_s"] for r in results]
        ratio = median(t / c for t, c in zip(ttft, cold, strict=True))
        same = sum(r["text"] == c["text"] for r, c in zip(results, runs["cold"], strict=True))
        restored = sum(r["restored"] for r in results)
        rows.append((side, median(ttft) * 1000, ratio, f"{restored}/{reps}", f"{same}/{reps}"))
    print_table(["resumed answer", "TTFT ms (median)", "/ cold", "restored", "reply as cold"], rows)
    print_notes(
        f"prompt: {runs['cold'][0]['prompt_tokens']} tokens; the park's save took {median(saves):.2f} s "
        "(median, in the background after the park returned)",
        f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
        "goal (issue 23): restored <= 0.15 of cold, after kill -9 too",
        f"reproduce: `python bench/resume.py --reps {reps} --context-tokens {context_tokens}`",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--context-tokens", type=int, default=2000)
    parser.add_argument("--child", choices=["cold", "same", "park", "resume"], help=argparse.SUPPRESS)
    parser.add_argument("--states", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args.child, args.states, args.context_tokens))
    else:
        main_parent(args.reps, args.context_tokens)


if __name__ == "__main__":
    main()
