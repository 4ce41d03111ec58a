"""Draftless n-gram speculation (`[model] speculative`, adapters/models/ngram.py), measured as
bench/turns.py measures a turn, in one run.

    python bench/speculation.py [--reps 5] [--max-tokens 96]

Four sides, each a process of its own at its defaults, on the embedded SmolLM2, one stream at a
time, greedy (temperature 0), max_tokens the same:
  agent auto               `WAYSTATION_MODEL__SPECULATIVE=auto python -m waystation run` (the
                           default; `[model] parallel` at its default, 4: the batch engine),
                           `POST /v1/turns` `"stream": true` over its socket
  agent off                the same with `WAYSTATION_MODEL__SPECULATIVE=off`
  llama-server             `llama-server -m MODEL` (built as bench/turns.py builds it),
                           `/v1/chat/completions` `"stream": true`
  llama-server ngram-mod   `llama-server -m MODEL --spec-type ngram-mod` (its own draftless n-gram
                           speculation, that flag's defaults)
The agent's turn is one user message, the prompt (`tool_choice: none`), the chat llama-server is
sent: both render it with the GGUF's chat template (checked: the same prompt token counts), so greedy replies
match up to numerics (counted, with where the first pair apart split). ngram-mod drafts only once
the last 24 tokens (`--spec-ngram-mod-n-match`) occurred before: a reply of fewer copied tokens
gets no drafts there (a `--max-tokens 24` run shows none).

Three kinds of prompt; each repetition gives the copy kinds a page not used before in the run (a
README.md section's prose, kept in bench/data/speculation_pages.json so that runs on other days
use the same pages: llama-server's ngram-mod keeps n-grams across requests, and a page seen again
would be drafted from the last reply):
  copy: repeat   "Repeat the following text word for word." and the page
  copy: quote    "Here is a page I fetched:", the page, "Using the page above, list its main points
                 as bullet points, quoting its sentences exactly." (an answer that quotes a fetched
                 page, as a resumed turn gives)
  open-ended     bench/turns.py's prompts (little to copy: drafts should cost next to nothing)

decode tok/s as in bench/turns.py: (tokens - 1) / (last piece - first piece). Each repetition
rotates which side goes first; ratios are medians of per-repetition ratios. Draft tokens: the
agent's `waystation_model_draft_tokens` (GET /metrics) before and after each turn, llama-server's
`timings.draft_n` / `draft_n_accepted`. Goals (issue 23): copy-heavy agent auto >= 1.25x
llama-server's default decode; open-ended auto >= 0.97x off; replies identical auto and off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from _harness import Agent, print_notes, print_table, progress, running_agent, uds_client
from _llama_server import Server, build_note, cache_dir, ensure_built, running, threads_in_log
from _turn_clients import Run, agent_turn, print_sides, server_turn
from turns import PROMPTS, timed

from waystation.adapters.models.embedded import default_model_path

README = Path(__file__).resolve().parent.parent / "README.md"
# The pages, kept as they were when written (`--write-pages`, from README.md): a page's wording
# decides how much of the answer is copied (a quote ratio went 1.23 -> 1.07 when README.md's
# sections were edited, with the same code), so runs on other days compare only on the same pages.
PAGES = Path(__file__).resolve().parent / "data" / "speculation_pages.json"
PAGE_CHARS = (800, 1800)  # a page's prose: sections with less are skipped, more is cut at a paragraph
NGRAM_FLAGS = ["--spec-type", "ngram-mod"]
KINDS = ("copy: repeat", "copy: quote", "open-ended")
AUTO, OFF, SERVER, NGRAM = "agent auto", "agent off", "llama-server", "llama-server ngram-mod"
DRAFT_METRIC = re.compile(r'^waystation_model_draft_tokens\{kind="(drafted|accepted)"\} (\S+)$', re.MULTILINE)
Turn = Callable[[str, int], Awaitable[Run]]
Runs = dict[str, dict[str, list[Run]]]  # kind -> side -> one run per repetition


def readme_pages() -> list[tuple[str, str]]:
    """README.md's sections as pages of prose, (heading, text): code blocks and tables left out,
    cut at the end of the paragraph that reaches PAGE_CHARS[1]."""
    pages: list[tuple[str, str]] = []
    heading, units, fenced = "", [""], False  # units: paragraphs and list items, as written
    for line in [*README.read_text().splitlines(), "## end"]:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            page = _page(units)
            if heading and len(page) >= PAGE_CHARS[0]:
                pages.append((heading, page))
            heading, units = line.lstrip("# ").strip(), [""]
        elif not fenced and not line.startswith("|"):
            if line.strip():
                if line.startswith("- ") and units[-1].strip():
                    units.append("")
                units[-1] += line + "\n"
            elif units[-1].strip():
                units[-1] += "\n"
                units.append("")
    return pages


def _page(units: list[str]) -> str:
    page = ""
    for unit in units:
        page += unit
        if len(page) >= PAGE_CHARS[1]:
            break
    return page.strip()


def prompt_for(kind: str, rep: int, pages: list[tuple[str, str]]) -> str:
    if kind == "open-ended":
        return PROMPTS[rep % len(PROMPTS)]
    # Of the wordings tried, those SmolLM2-135M copies most from (a page after "Repeat the text
    # above word for word." it often paraphrases or loops on a few tokens).
    _, page = pages[(2 * rep + (kind == "copy: quote")) % len(pages)]
    if kind == "copy: repeat":
        return f"Repeat the following text word for word.\n\n{page}"
    return (
        f"Here is a page I fetched:\n\n{page}\n\n"
        "Using the page above, list its main points as bullet points, quoting its sentences exactly."
    )


async def draft_tokens(client: httpx.AsyncClient) -> tuple[int, int]:
    """The agent's draft tokens so far (drafted, accepted), from its /metrics."""
    found = dict(DRAFT_METRIC.findall((await client.get("/metrics")).text))
    return int(float(found.get("drafted", 0))), int(float(found.get("accepted", 0)))


def on_agent(agent: Agent, client: httpx.AsyncClient) -> Turn:
    """A streamed turn through the agent's socket, timed as bench/turns.py does, with the draft
    tokens it added to /metrics (read outside the CPU timing)."""

    async def plain(prompt: str, n: int) -> Run:
        return (await agent_turn(client, prompt, n))[0]

    measured = timed(agent.pid, plain)

    async def turn(prompt: str, n: int) -> Run:
        before = await draft_tokens(client)
        run = await measured(prompt, n)
        after = await draft_tokens(client)
        run.drafted, run.accepted = after[0] - before[0], after[1] - before[1]
        return run

    return turn


async def measure(reps: int, max_tokens: int, pages: list[tuple[str, str]]) -> tuple[Runs, list[str]]:
    """Every side, every kind, `reps` times; and how each side was started."""
    binary, model = ensure_built(), default_model_path()
    logs = cache_dir() / "logs"
    logs.mkdir(exist_ok=True)
    sides: dict[str, Turn] = {}
    commands: list[str] = []
    runs: Runs = {kind: {} for kind in KINDS}
    async with contextlib.AsyncExitStack() as stack:
        for name, speculative in ((AUTO, "auto"), (OFF, "off")):
            env = {"WAYSTATION_MODEL__PATH": str(model), "WAYSTATION_MODEL__SPECULATIVE": speculative}
            agent = await stack.enter_async_context(running_agent("offline", env))
            sides[name] = on_agent(agent, await stack.enter_async_context(uds_client(agent.socket)))
            commands.append(f"{name}: `{agent.how}`")
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=300))
        for name, flags, log_name in ((SERVER, [], "default"), (NGRAM, NGRAM_FLAGS, "ngram")):
            log = logs / f"speculation-{log_name}.log"
            server = stack.enter_context(running(binary, model, flags, log))
            sides[name] = on_server(http, server)
            commands.append(f"{name}: `{' '.join(server.command)}` ({threads_in_log(log)})")
        for turn in sides.values():  # load and warm up each side
            await turn("Say hello.", 8)
        for rep in range(reps):
            for k, kind in enumerate(KINDS):
                names = list(sides)
                first = (rep * len(KINDS) + k) % len(names)
                for name in names[first:] + names[:first]:
                    run = await sides[name](prompt_for(kind, rep, pages), max_tokens)
                    runs[kind].setdefault(name, []).append(run)
                progress(
                    f"rep {rep + 1}/{reps} {kind}: "
                    + ", ".join(f"{n} {r[-1].decode_tps:.0f} tok/s" for n, r in runs[kind].items())
                )
    return runs, commands


def agreed(a: str, b: str) -> int:
    """The characters two replies share from the start."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def on_server(http: httpx.AsyncClient, server: Server) -> Turn:
    return timed(server.proc.pid, lambda prompt, n: server_turn(http, server.url, prompt, n))


# Rows of the report: (side, side it is compared with, note).
RATIOS = [
    (AUTO, SERVER, "goal >= 1.25 on the copy kinds"),
    (AUTO, NGRAM, "reference"),
    (AUTO, OFF, "goal >= 0.97 open-ended"),
    (NGRAM, SERVER, "ngram-mod in llama-server"),
    (OFF, SERVER, "no speculation on either side"),
]
SAME = [
    (AUTO, OFF, "goal: all (greedy)"),
    (NGRAM, SERVER, "llama-server's own"),
    (OFF, SERVER, "the sides run the same chat"),
]


def report(runs: Runs, commands: list[str], reps: int, max_tokens: int, pages: list[tuple[str, str]]) -> None:
    median = statistics.median
    for kind in KINDS:
        print(f"\n### {kind}\n")
        print_sides(runs[kind])

    def pairs(kind: str, a: str, b: str) -> list[tuple[Run, Run]]:
        return list(zip(runs[kind][a], runs[kind][b], strict=True))

    def ratio(kind: str, a: str, b: str) -> float:
        return float(median(x.decode_tps / y.decode_tps for x, y in pairs(kind, a, b)))

    def same(kind: str, a: str, b: str) -> str:
        """How many replies are identical; where some are not, how far the first apart agreed (a
        late token: numerics, e.g. a prompt split into other batches; at 0: another chat)."""
        apart = [agreed(x.text, y.text) for x, y in pairs(kind, a, b) if x.text != y.text]
        return f"{reps - len(apart)}/{reps}" + (f" (apart after {min(apart)} chars)" if apart else "")

    print()
    rows = [(f"{a} / {b}", *(ratio(k, a, b) for k in KINDS), note) for a, b, note in RATIOS]
    print_table(["decode tok/s, ratio (median of pairs)", *KINDS, "note"], rows)
    print()
    rows = [(f"{a} = {b}", *(same(k, a, b) for k in KINDS), note) for a, b, note in SAME]
    print_table(["replies identical", *KINDS, "note"], rows)
    print()
    rows = []
    for kind in KINDS:
        for side in (AUTO, OFF, NGRAM):
            drafted = sum(r.drafted for r in runs[kind][side])
            accepted = sum(r.accepted for r in runs[kind][side])
            tokens = sum(r.tokens for r in runs[kind][side])
            rows.append(
                (kind, side, drafted, accepted, accepted / drafted if drafted else float("nan"), tokens)
            )
    print_table(
        ["draft tokens (all repetitions)", "side", "drafted", "accepted", "accepted share", "reply tokens"],
        rows,
    )
    used = [pages[(2 * rep + q) % len(pages)][0] for rep in range(reps) for q in (0, 1)]
    print_notes(
        *commands,
        build_note(),
        f"pages ({PAGES.name}: README.md sections' prose, code blocks and tables left out, "
        f"{PAGE_CHARS[0]:,}-{PAGE_CHARS[1]:,}+ characters), repeat / quote per repetition: "
        + "; ".join(f'"{h}"' for h in used),
        f"{reps} repetitions per side and kind, rotating which side goes first; max_tokens {max_tokens}; "
        "ratio > 1: the first did better",
        f"reproduce: `python bench/speculation.py --reps {reps} --max-tokens {max_tokens}`",
    )


def stored_pages() -> list[tuple[str, str]]:
    return [(page["heading"], page["text"]) for page in json.loads(PAGES.read_text())]


def write_pages() -> None:
    PAGES.parent.mkdir(exist_ok=True)
    pages = [{"heading": heading, "text": text} for heading, text in readme_pages()]
    PAGES.write_text(json.dumps(pages, indent=1, ensure_ascii=False) + "\n")
    progress(f"{len(pages)} pages from README.md written to {PAGES}")


async def main_async(reps: int, max_tokens: int) -> Runs:
    pages = stored_pages()
    if 2 * reps > len(pages):
        progress(
            f"{len(pages)} README pages for {2 * reps} copy prompts: pages repeat (ngram-mod keeps n-grams)"
        )
    runs, commands = await measure(reps, max_tokens, pages)
    report(runs, commands, reps, max_tokens, pages)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5, help="repetitions per side and prompt kind")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument(
        "--replies", metavar="FILE", help="write every reply here (JSON: kind -> side -> texts)"
    )
    parser.add_argument(
        "--write-pages", action="store_true", help=f"take the pages from README.md again, into {PAGES.name}"
    )
    args = parser.parse_args()
    if args.write_pages:
        write_pages()
        return
    runs = asyncio.run(main_async(args.reps, args.max_tokens))
    if args.replies:
        replies = {
            kind: {side: [r.text for r in rs] for side, rs in sides.items()} for kind, sides in runs.items()
        }
        Path(args.replies).write_text(json.dumps(replies, indent=1) + "\n")


if __name__ == "__main__":
    main()
