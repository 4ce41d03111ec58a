"""Draftless n-gram speculation (`[model] speculative`, adapters/models/ngram.py), in one run.

    python bench/speculation.py [--reps 5] [--max-tokens 96]

Greedy replies on the embedded SmolLM2 through the agent's llama.cpp backend in this process
(`[model] parallel = 4`, one stream), speculation `auto` against `off`, and llama-server at its
defaults (built as bench/turns.py builds it) on the same chat:
  copy-heavy   a page of text in the prompt, the reply asked to repeat it (what an answer quoting
               a fetched page does)
  open-ended   bench/turns.py's prompts (little to copy: drafts should cost next to nothing)
decode tok/s as in bench/turns.py: (tokens - 1) / (last piece - first piece). Goals (issue 23):
copy-heavy auto >= 1.25x llama-server's default decode; open-ended auto >= 0.97x off; replies
identical with and without speculation.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import httpx
from _harness import print_notes, print_table, progress
from _llama_server import cache_dir, ensure_built, running
from _turn_clients import server_turn
from turns import PROMPTS

from waystation.adapters.models.base import GenerationRequest
from waystation.adapters.models.embedded import default_model_path
from waystation.adapters.models.llamacpp import LlamaCppBackend, LlamaOptions

PAGE = (Path(__file__).resolve().parent.parent / "README.md").read_text()[:1500]
COPY = f"{PAGE}\n\nRepeat the text above word for word."


async def agent_turn(backend: LlamaCppBackend, prompt: str, max_tokens: int) -> tuple[float, str]:
    stamps: list[float] = []
    request = GenerationRequest([{"role": "user", "content": prompt}], max_tokens=max_tokens)
    generation = await backend.generate(request, lambda _piece: stamps.append(time.perf_counter()))
    tokens = generation.completion_tokens
    return (tokens - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan"), generation.text


async def main_async(reps: int, max_tokens: int) -> None:
    binary, model = ensure_built(), default_model_path()
    sides = {
        s: LlamaCppBackend(str(model), options=LlamaOptions(parallel=4, speculative=s))
        for s in ("auto", "off")
    }
    tps: dict[tuple[str, str], list[float]] = {}
    same = {"copy-heavy": 0, "open-ended": 0}
    async with httpx.AsyncClient(timeout=300) as http:
        with running(binary, model, [], cache_dir() / "logs" / "speculation.log") as server:
            for backend in sides.values():
                await agent_turn(backend, "Say hello.", 8)
            await server_turn(http, server.url, "Say hello.", 8)
            for rep in range(reps):
                for kind, prompt in (("copy-heavy", COPY), ("open-ended", PROMPTS[rep % len(PROMPTS)])):
                    texts = {}
                    for name, backend in sides.items():
                        rate, texts[name] = await agent_turn(backend, prompt, max_tokens)
                        tps.setdefault((kind, f"agent, speculative {name}"), []).append(rate)
                    same[kind] += texts["auto"] == texts["off"]
                    run = await server_turn(http, server.url, prompt, max_tokens)
                    tps.setdefault((kind, "llama-server, defaults"), []).append(run.decode_tps)
                progress(f"rep {rep + 1}/{reps}")
    drafts = sides["auto"].drafts
    for backend in sides.values():
        await backend.close()
    median = statistics.median
    print_table(["prompt", "side", "decode tok/s (median)"], [(k, s, median(v)) for (k, s), v in tps.items()])
    print()

    def ratio(kind: str, a: str, b: str) -> float:
        return float(median(x / y for x, y in zip(tps[(kind, a)], tps[(kind, b)], strict=True)))

    auto, off, server_side = "agent, speculative auto", "agent, speculative off", "llama-server, defaults"
    print_table(
        ["ratio (median of pairs)", "value", "goal"],
        [
            ("copy-heavy: auto / llama-server", ratio("copy-heavy", auto, server_side), ">= 1.25"),
            ("copy-heavy: auto / off", ratio("copy-heavy", auto, off), "-"),
            ("open-ended: auto / off", ratio("open-ended", auto, off), ">= 0.97"),
        ],
    )
    print_notes(
        f"replies identical with and without speculation: copy-heavy {same['copy-heavy']}/{reps}, "
        f"open-ended {same['open-ended']}/{reps}",
        f"draft tokens (auto): {drafts[0]} drafted, {drafts[1]} accepted",
        f"reproduce: `python bench/speculation.py --reps {reps} --max-tokens {max_tokens}`",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    asyncio.run(main_async(args.reps, args.max_tokens))


if __name__ == "__main__":
    main()
