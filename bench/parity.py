"""The same request to the agent and to llama-server on the same model file: the same reply?

    python bench/parity.py [--max-tokens 300]

Issue 23 asks the agent's C sampler chain for what llama-server's gives: "output for a fixed seed
is what the same sampler chain gives in llama-server". Three sides, each a process at its defaults,
on the embedded SmolLM2, one request at a time, `/v1/chat/completions` not streamed (the agent's
over its socket, with `[model] parallel` at its default, 4: the batch engine):
  llama-server   `llama-server -m MODEL` (built as bench/turns.py builds it)
  agent auto     `python -m waystation run`, `[model] speculative = "auto"` (the default)
  agent off      the same with `WAYSTATION_MODEL__SPECULATIVE=off`
Two kinds of request:
  sampled  two prompts x seven sampler settings (temperature, seed, top_p, OpenAI's frequency and
           presence penalties), 40 tokens: the seeded draw of llama-server's chain
  greedy   bench/turns.py's ten prompts at temperature 0, max_tokens 300 (prompt and reply go past
           256 tokens, where llama.cpp's CPU attention for one token alone splits the cache among
           the threads and a draft's rows do not: adapters/models/ngram.py)
Nothing is timed: the figures are counts of identical replies, and how far the first pair apart
agreed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

import httpx
from _harness import print_notes, print_table, progress, running_agent, uds_client
from _llama_server import build_note, cache_dir, ensure_built, running, threads_in_log
from speculation import agreed
from turns import PROMPTS

from waystation.adapters.models.embedded import default_model_path

SERVER, AUTO, OFF = "llama-server", "agent auto", "agent off"
SAMPLED_PROMPTS = ["Invent a name for a cat.", "Write a haiku about rain."]
SETTINGS: list[dict[str, Any]] = [
    {"temperature": 0.8, "seed": 1},
    {"temperature": 0.8, "seed": 2},
    {"temperature": 0.8, "seed": 42},
    {"temperature": 0.8, "seed": 1234},
    {"temperature": 1.0, "seed": 7, "top_p": 0.9},
    {"temperature": 0.7, "seed": 3, "frequency_penalty": 0.5},
    {"temperature": 1.2, "seed": 11, "presence_penalty": 0.8},
]
Replies = dict[str, dict[str, list[str]]]  # kind -> side -> one reply per request


def requests(max_tokens: int) -> dict[str, list[dict[str, Any]]]:
    def chat(prompt: str, tokens: int, **sampling: Any) -> dict[str, Any]:
        messages = [{"role": "user", "content": prompt}]
        return {"model": "x", "messages": messages, "max_tokens": tokens, **sampling}

    return {
        "sampled": [chat(p, 40, **s) for p in SAMPLED_PROMPTS for s in SETTINGS],
        "greedy": [chat(p, max_tokens, temperature=0) for p in PROMPTS],
    }


async def reply(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await client.post("/v1/chat/completions", json=body, timeout=300)
    response.raise_for_status()
    return str(response.json()["choices"][0]["message"]["content"])


async def measure(max_tokens: int) -> tuple[Replies, list[str]]:
    binary, model = ensure_built(), default_model_path()
    log = cache_dir() / "logs" / "parity.log"
    log.parent.mkdir(exist_ok=True)
    clients: dict[str, httpx.AsyncClient] = {}
    commands: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        server = stack.enter_context(running(binary, model, [], log))
        clients[SERVER] = await stack.enter_async_context(httpx.AsyncClient(base_url=server.url))
        commands.append(f"{SERVER}: `{' '.join(server.command)}` ({threads_in_log(log)})")
        for name, speculative in ((AUTO, "auto"), (OFF, "off")):
            env = {"WAYSTATION_MODEL__PATH": str(model), "WAYSTATION_MODEL__SPECULATIVE": speculative}
            agent = await stack.enter_async_context(running_agent("offline", env))
            clients[name] = await stack.enter_async_context(uds_client(agent.socket))
            commands.append(f"{name}: `{agent.how}`")
        replies: Replies = {}
        for kind, bodies in requests(max_tokens).items():
            for i, body in enumerate(bodies):
                for name, client in clients.items():
                    replies.setdefault(kind, {}).setdefault(name, []).append(await reply(client, body))
                progress(f"{kind} {i + 1}/{len(bodies)}")
    return replies, commands


def report(replies: Replies, commands: list[str], max_tokens: int) -> None:
    def same(kind: str, side: str) -> str:
        pairs = list(zip(replies[kind][side], replies[kind][SERVER], strict=True))
        apart = [agreed(a, b) for a, b in pairs if a != b]
        return f"{len(pairs) - len(apart)}/{len(pairs)}" + (
            f" (first apart after {min(apart)} chars)" if apart else ""
        )

    rows = [(f"{side} = {SERVER}", same("sampled", side), same("greedy", side)) for side in (AUTO, OFF)]
    print_table(["replies identical", "sampled (seeded)", f"greedy ({max_tokens} tokens)"], rows)
    print_notes(
        *commands,
        build_note(),
        "sampled: " + "; ".join(str(s) for s in SETTINGS) + f", prompts {SAMPLED_PROMPTS}, 40 tokens",
        f"reproduce: `python bench/parity.py --max-tokens {max_tokens}`",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-tokens", type=int, default=300, help="the greedy replies' max_tokens")
    args = parser.parse_args()
    replies, commands = asyncio.run(measure(args.max_tokens))
    report(replies, commands, args.max_tokens)


if __name__ == "__main__":
    main()
