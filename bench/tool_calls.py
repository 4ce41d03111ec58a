"""Local turns that call tools, on the embedded model through a real agent, in one run.

    python bench/tool_calls.py [--reps 5]

1. The prompt set (tests/data/turn_prompts.json, scored as the suite scores it): false network
   calls, invented URLs, right calls, with the agent offline (calls park; nothing is sent). To
   measure another checkout, run this file with that checkout first on PYTHONPATH, from a
   directory outside both (e.g. `cd /tmp && PYTHONPATH=/path/to/old python /path/to/bench/...`).
2. Time to a parked tool call on a warm model, against a plain turn (tool_choice none) asked to
   write about as many tokens, both through the agent; and ms per generated token of each (the
   parked turn decodes under the grammar). Goal: parked / plain <= 1.3.
3. Decode ms/token in this process (raw llama-cpp-python, the embedded model, greedy, streamed,
   first token excluded): no grammar, the tool-call grammar on llama-cpp-python's own chain (the
   grammar judges the whole vocabulary every step), and on the check-first sampler the agent
   installs (adapters/models/fast_grammar.py). Goal: grammar overhead <= 10 %. The same with the
   batch engine's C sampler chain and lazily asked grammar (adapters/models/batching.py,
   sampling.py; what `[model] parallel` > 0 runs): goal (issue 23) <= +5 % over its free decode.
4. Ask offline, answer readable later: a turn naming a loopback page, then `online`, then
   `turn wait`: each step timed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _harness import helper_server, print_notes, print_table, progress, running_agent, uds_client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from turn_prompt_set import Score, prompt_set


async def post_turn(client: Any, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    answer = await client.post("/v1/turns", json=body)
    answer.raise_for_status()
    return time.perf_counter() - started, dict(answer.json())


async def prompt_set_score(base: str) -> Score:
    score = Score()
    async with running_agent("offline") as agent, uds_client(agent.socket) as client:
        for category, prompt in prompt_set(base):
            progress(f"prompt set: {prompt[:50]}")
            _, turn = await post_turn(client, {"prompt": prompt, "max_tokens": 96})
            score.add(category, prompt, turn)
    return score


async def parked_vs_plain(base: str, reps: int) -> list[list[object]]:
    parked_s, plain_s, parked_tokens, plain_tokens = [], [], [], []
    async with running_agent("offline") as agent, uds_client(agent.socket) as client:
        await post_turn(client, {"prompt": "Say hi.", "tool_choice": "none", "max_tokens": 4})  # warm
        for i in range(reps):
            progress(f"parked vs plain {i + 1}/{reps}")
            seconds, turn = await post_turn(client, {"prompt": f"Fetch {base}/page/Rep-{i} for me."})
            assert turn["status"] == "parked", turn
            parked_s.append(seconds)
            parked_tokens.append(turn["usage"]["completion_tokens"])
            tokens = turn["usage"]["completion_tokens"]
            body = {"prompt": f"Describe harbour number {i}.", "tool_choice": "none", "max_tokens": tokens}
            seconds, turn = await post_turn(client, body)
            plain_s.append(seconds)
            plain_tokens.append(turn["usage"]["completion_tokens"])
    parked, plain = statistics.median(parked_s), statistics.median(plain_s)
    ms_parked = 1000 * parked / statistics.median(parked_tokens)
    ms_plain = 1000 * plain / statistics.median(plain_tokens)
    return [
        [
            "parked tool call (grammar)",
            f"{parked * 1000:.0f} ms",
            statistics.median(parked_tokens),
            f"{ms_parked:.1f}",
        ],
        [
            "plain turn (no grammar)",
            f"{plain * 1000:.0f} ms",
            statistics.median(plain_tokens),
            f"{ms_plain:.1f}",
        ],
        ["ratio parked / plain", f"{parked / plain:.2f}", "", f"{ms_parked / ms_plain:.2f}"],
    ]


def decode_ms_per_token(reps: int) -> list[list[object]]:
    import json

    from llama_cpp import Llama
    from llama_cpp.llama_grammar import LlamaGrammar

    from waystation.adapters.models import fast_grammar
    from waystation.adapters.models.base import tool_call_schema
    from waystation.adapters.models.embedded import default_model_path
    from waystation.adapters.tools import default_tools
    from waystation.station.turns.calls import offer

    specs, _ = offer(default_tools(), "auto", ["http://127.0.0.1:9/"], [])
    schema = json.dumps(tool_call_schema(specs, "auto"))
    from waystation.adapters.models.batch_job import completion
    from waystation.adapters.models.batching import BatchEngine

    plain = Llama(str(default_model_path()), n_ctx=2048, verbose=False)
    checked = Llama(str(default_model_path()), n_ctx=2048, verbose=False)
    fast_grammar.install(checked)
    batched = Llama(str(default_model_path()), n_ctx=2048, verbose=False)
    engine = BatchEngine(batched, 1, 2048, speculative=False)  # sampling alone, no drafts

    def decode(llm: Any, prompt: str, grammar: bool) -> float:
        stamps = []
        rule = LlamaGrammar.from_json_schema(schema, verbose=False) if grammar else None
        if llm is batched:
            tokens = batched.tokenize(prompt.encode(), special=True)
            for _ in completion(engine.submit(tokens, 48, 0.0, 0, rule), [], lambda: False):
                stamps.append(time.perf_counter())
        else:
            for _ in llm.create_completion(prompt, max_tokens=48, temperature=0, grammar=rule, stream=True):
                stamps.append(time.perf_counter())
        return 1000 * (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)

    sides = {"no grammar": (plain, False), "grammar, llama-cpp-python's chain": (plain, True)}
    sides["grammar, check-first (the agent, parallel = 0)"] = (checked, True)
    sides["batch engine, no grammar"] = (batched, False)
    sides["batch engine, grammar (the agent, parallel > 0)"] = (batched, True)
    timings: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(reps):
        progress(f"decode {i + 1}/{reps}")
        prompt = f"<|im_start|>user\nWrite about harbour {i}.<|im_end|>\n<|im_start|>assistant\n"
        for name, (llm, grammar) in sides.items():
            timings[name].append(decode(llm, prompt, grammar))
    engine.close()
    rows = []
    for name, t in timings.items():
        base = statistics.median(timings["batch engine, no grammar" if "engine" in name else "no grammar"])
        rows.append([name, f"{statistics.median(t):.2f}", f"{statistics.median(t) / base:.2f}"])
    return rows


async def offline_then_answer() -> list[str]:
    with helper_server("receiver") as (_, address):
        async with running_agent("offline") as agent, uds_client(agent.socket) as client:
            await post_turn(client, {"prompt": "Say hi.", "tool_choice": "none", "max_tokens": 4})  # warm
            url = f"{address}/page/Harbour-Lights"
            asked, turn = await post_turn(client, {"prompt": f"Fetch {url} and tell me its title."})
            started = time.perf_counter()
            await client.put("/v1/connectivity", json={"mode": "online"})
            states: dict[str, float] = {}
            while True:
                now = await client.get(f"/v1/turns/{turn['turn_id']}")
                found = now.json()
                call = found["tool_calls"][0] if found["tool_calls"] else {}
                if call.get("task_state") == "done":
                    states.setdefault("delivered", time.perf_counter() - started)
                if found["state"] not in ("parked", "resuming", "running"):
                    states["answered"] = time.perf_counter() - started
                    break
                await asyncio.sleep(0.01)
    return [
        f"ask offline -> parked: {asked * 1000:.0f} ms",
        f"online -> call delivered: {states.get('delivered', float('nan')) * 1000:.0f} ms",
        f"online -> answer readable ({found['state']}: {found['text']!r}): {states['answered'] * 1000:.0f} ms"
        if found["state"] == "ok"
        else f"online -> ended {found['state']}: {found['reason']}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--prompt-set-only", action="store_true", help="(1) alone, e.g. on an older checkout")
    parser.add_argument("--decode-only", action="store_true", help="(3) alone")
    args = parser.parse_args()
    decode_columns = ["decode (raw, medians)", "ms/token", "ratio to no grammar (of its own side)"]
    if args.decode_only:
        print_table(decode_columns, decode_ms_per_token(args.reps))
        return
    base = "http://127.0.0.1:9"  # never reached: the agent is offline
    score = asyncio.run(prompt_set_score(base))
    print_notes("Prompt set (33 prompts, embedded model, agent offline):", *score.lines())
    if args.prompt_set_only:
        return
    rows = asyncio.run(parked_vs_plain(base, args.reps))
    print_table(["turn (warm model, medians)", "time", "completion tokens", "ms/token"], rows)
    print_table(decode_columns, decode_ms_per_token(args.reps))
    print_notes("Ask offline, answer later:", *asyncio.run(offline_then_answer()))


if __name__ == "__main__":
    main()
