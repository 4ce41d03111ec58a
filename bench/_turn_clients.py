"""One streamed turn, timed from the client's side, for each thing bench/turns.py compares.

Every side is timed the same way: TTFT from sending the request (or making the call) to the first
piece of text, decode tok/s as (tokens - 1) / (last piece - first piece), with `tokens` the
completion tokens the side itself counted (an SSE event may carry several tokens: the agent sends
what the model produced while its event loop was busy as one event).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from _harness import print_table


@dataclass
class Run:
    ttft_ms: float
    decode_tps: float
    e2e_tps: float
    tokens: int
    events: int
    text: str
    cpu_ms_per_token: float = float("nan")
    # Speculation's draft tokens over the turn, where the side tells them: llama-server's
    # `timings.draft_n` / `draft_n_accepted`; the agent's /metrics (bench/speculation.py).
    drafted: int = 0
    accepted: int = 0


def summarize(started: float, stamps: list[float], ended: float, pieces: list[str], tokens: int) -> Run:
    decode = (tokens - 1) / (stamps[-1] - stamps[0]) if tokens > 1 and len(stamps) > 1 else float("nan")
    return Run(
        ttft_ms=(stamps[0] - started) * 1000 if stamps else float("nan"),
        decode_tps=decode,
        e2e_tps=tokens / (ended - started),
        tokens=tokens,
        events=len(stamps),
        text="".join(pieces),
    )


async def agent_turn(client: Any, prompt: str, max_tokens: int) -> tuple[Run, dict[str, Any]]:
    """`POST /v1/turns` with `"stream": true` over the agent's socket."""
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
    return summarize(started, stamps, ended, pieces, done["usage"]["completion_tokens"]), done


async def server_turn(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> Run:
    """llama-server's OpenAI-compatible `/v1/chat/completions`, streamed, with usage at the end."""
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    stamps: list[float] = []
    pieces: list[str] = []
    tokens = 0
    timings: dict[str, Any] = {}
    started = time.perf_counter()
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"llama-server: {response.status_code} {await response.aread()!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            for choice in data.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    stamps.append(time.perf_counter())
                    pieces.append(content)
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
            timings = data.get("timings") or timings
    ended = time.perf_counter()
    run = summarize(started, stamps, ended, pieces, tokens or len(stamps))
    run.drafted, run.accepted = timings.get("draft_n", 0), timings.get("draft_n_accepted", 0)
    return run


def raw_turn(llm: Any, prompt: str, max_tokens: int) -> Run:
    """llama-cpp-python in this process: `create_chat_completion(stream=True)`."""
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
    text = "".join(pieces)
    tokens = len(llm.tokenize(text.encode(), add_bos=False, special=True)) if text else 0
    run = summarize(started, stamps, time.perf_counter(), pieces, tokens)
    run.cpu_ms_per_token = (time.process_time() - cpu) * 1000 / max(1, run.tokens)
    return run


def print_sides(runs: Mapping[str, Sequence[Run]]) -> None:
    """One row per side: the medians of its runs."""

    def col(name: str, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in runs[name]))

    print_table(
        ["side (median)", "decode tok/s", "TTFT ms", "CPU ms/token", "tokens", "SSE events"],
        [(n, col(n, "decode_tps"), col(n, "ttft_ms"), col(n, "cpu_ms_per_token"), col(n, "tokens"),
          col(n, "events")) for n in runs],
    )  # fmt: skip
