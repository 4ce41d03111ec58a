"""Several sequences at once on llama.cpp (`[model] parallel`, adapters/models/batching.py), on the
real embedded SmolLM2 with short replies.

Greedy replies generated four at a time are those generated one at a time through llama-cpp-python
(`parallel = 0`): free text, a grammar-constrained tool call and a reply cut at a stop string; a
fifth and sixth wait with `waiting` stage events. A cancelled generation frees its sequence, a
prompt that begins as an earlier one evaluates only the rest, and over the socket four streamed
turns at once each complete with their own text while `models ps` counts the sequences. With
`speculative = "auto"` a reply that repeats a page drafts from it and is the reply without.
OpenAI's penalties work as llama-server's, batched and serial alike, under a grammar too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.agentproc import Agent, sse_events, started_agent
from test_models_pull import cli

from waystation.adapters.models.base import Generation, GenerationRequest, ToolSpec
from waystation.adapters.models.batch_job import completion
from waystation.adapters.models.embedded import default_model_path
from waystation.adapters.models.llamacpp import LlamaCppBackend, LlamaOptions
from waystation.adapters.models.ngram import CPU_ROW_SHARE, GPU_ROW_SHARE, Drafter, break_even
from waystation.adapters.models.sampling import PENALTY_LAST_N, SequenceSampler

MAX_TOKENS = 24
FETCH = ToolSpec(
    "web_fetch",
    "Fetch a URL.",
    {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]},
)


def requests() -> list[GenerationRequest]:
    def asked(text: str, max_tokens: int = MAX_TOKENS, **extra: Any) -> GenerationRequest:
        return GenerationRequest([{"role": "user", "content": text}], max_tokens=max_tokens, **extra)

    return [
        asked("Write a short paragraph about lighthouses."),
        asked("Explain why the sky is blue."),
        asked("Describe the ocean at night."),
        asked("Fetch http://example.com/page and tell me what it says.", 48, tools=[FETCH]),
        asked("Explain how bread is made.", stop=[","]),
        asked("Write a short poem about trains."),
    ]


def reply(g: Generation) -> tuple[Any, ...]:
    return g.text, [c.arguments for c in g.tool_calls], g.finish_reason, g.completion_tokens


@pytest.fixture(scope="module")
def model_path() -> Path:
    return default_model_path()


@pytest.fixture(scope="module")
def one_at_a_time(model_path: Path) -> list[tuple[Any, ...]]:
    async def run() -> list[tuple[Any, ...]]:
        backend = LlamaCppBackend(str(model_path), options=LlamaOptions(parallel=0))
        try:
            return [reply(await backend.generate(r)) for r in requests()]
        finally:
            await backend.close()

    return asyncio.run(run())


@pytest.fixture
async def batched(model_path: Path) -> AsyncIterator[LlamaCppBackend]:
    backend = LlamaCppBackend(str(model_path), options=LlamaOptions(parallel=4))
    try:
        yield backend
    finally:
        await backend.close()


async def test_four_at_once_reply_as_one_at_a_time_and_the_rest_wait(
    batched: LlamaCppBackend, one_at_a_time: list[tuple[Any, ...]]
) -> None:
    stages: dict[int, list[tuple[str, int]]] = {}
    asked = [
        GenerationRequest(
            **{**r.__dict__, "on_stage": lambda s, a, i=i: stages.setdefault(i, []).append((s, a))}
        )
        for i, r in enumerate(requests())
    ]
    seen: set[tuple[int, int]] = set()  # (sequences generating, requests waiting), as models ps shows

    async def watch() -> None:
        while True:
            seen.add((batched.in_use, batched.waiting))
            await asyncio.sleep(0.01)

    watcher = asyncio.ensure_future(watch())
    try:
        replies = [reply(g) for g in await asyncio.gather(*(batched.generate(r) for r in asked))]
    finally:
        watcher.cancel()
    assert replies == one_at_a_time
    assert (4, 2) in seen, seen
    assert replies[3][1] == [{"url": "http://example.com/page"}] and replies[3][2] == "tool_calls"
    assert replies[4][2] == "stop" and "," not in replies[4][0]
    assert all(("waiting", 1) not in stages[i] for i in range(4))
    assert stages[4] == [("waiting", 1), ("generating", 0)]
    assert stages[5] == [("waiting", 2), ("generating", 0)]
    assert batched.in_use == batched.waiting == 0 and not batched.busy


async def test_a_cancelled_generation_frees_its_sequence(batched: LlamaCppBackend) -> None:
    first_piece = asyncio.Event()
    long = GenerationRequest([{"role": "user", "content": "Write a long story."}], max_tokens=2000)
    task = asyncio.create_task(batched.generate(long, lambda _piece: first_piece.set()))
    await asyncio.wait_for(first_piece.wait(), 60)
    assert batched.in_use == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert batched.in_use == 0
    engine = batched._handle.engine if batched._handle else None
    assert engine is not None
    for _ in range(100):  # the engine drops the sequence at its next step
        if engine.in_use == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.in_use == 0
    again = await batched.generate(GenerationRequest([{"role": "user", "content": "Say hi."}], max_tokens=4))
    assert again.text and again.finish_reason in ("stop", "length")


async def test_a_seed_repeats_a_sampled_reply(batched: LlamaCppBackend, model_path: Path) -> None:
    """OpenAI's `seed`: the same sampled reply again, at once beside another sequence or alone,
    and from the serial path too."""

    def asked(seed: int) -> GenerationRequest:
        content = "Invent a name for a cat."
        return GenerationRequest(
            [{"role": "user", "content": content}], max_tokens=16, temperature=1.0, seed=seed
        )

    first, beside = await asyncio.gather(batched.generate(asked(7)), batched.generate(asked(7)))
    again = await batched.generate(asked(7))
    assert first.text == beside.text == again.text
    others = {(await batched.generate(asked(seed))).text for seed in (8, 9, 10)}
    assert others != {first.text}  # a seed chooses the reply; sampling is not greedy
    serial = LlamaCppBackend(str(model_path), options=LlamaOptions(parallel=0))
    try:
        assert (await serial.generate(asked(7))).text == (await serial.generate(asked(7))).text
    finally:
        await serial.close()


async def test_a_seeded_reply_is_llama_cpps_own_chain(batched: LlamaCppBackend, model_path: Path) -> None:
    """A seed draws what llama.cpp's chain draws (top-k 40, top-p, min-p 0.05, temperature, the
    seeded dist): the reply llama-cpp-python's own chain gives for the same request. (With
    penalties the reply is llama-server's, bench/parity.py: 14 of 14, which llama-cpp-python's
    chain does not give.)"""
    import llama_cpp

    own = llama_cpp.Llama(str(model_path), n_ctx=1024, n_threads=2, flash_attn=True, verbose=False)
    asked: list[tuple[str, dict[str, Any]]] = [
        ("Invent a name for a cat.", {"temperature": 0.8, "seed": 42}),
        ("Write a haiku about rain.", {"temperature": 1.0, "seed": 7, "top_p": 0.9}),
    ]
    try:
        for content, sampling in asked:
            messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
            ours = (await batched.generate(GenerationRequest(messages, max_tokens=24, **sampling))).text
            theirs: Any = own.create_chat_completion(messages, max_tokens=24, **sampling)  # type: ignore[arg-type]
            assert ours == theirs["choices"][0]["message"]["content"], sampling
    finally:
        own.close()


FRUITS = "Write a list of ten fruits, one per line."
DESCRIBE_FORMAT = {
    "type": "object",
    "properties": {"description": {"type": "string"}},
    "required": ["description"],
}


async def test_a_frequency_penalty_is_llama_servers_batched_and_serial(
    batched: LlamaCppBackend, model_path: Path
) -> None:
    """OpenAI's frequency_penalty in llama-server's chain (the penalties over the last 64 tokens,
    the prompt's among them, then the greedy pick): a reply that repeats fewer tokens than
    without it, the same again beside another sequence or alone, and the same from the serial
    path. Under a grammar too: a tool call that parses, and a JSON answer that is the serial
    path's (a pick the grammar refused, or a token taken in twice, would change what follows)."""

    def asked(text: str, max_tokens: int = 32, **extra: Any) -> GenerationRequest:
        return GenerationRequest([{"role": "user", "content": text}], max_tokens=max_tokens, **extra)

    penalized = [
        asked(FRUITS, frequency_penalty=2.0),
        dataclasses.replace(requests()[3], frequency_penalty=2.0),  # a tool call
        asked("Describe a cat.", 48, response_format=DESCRIBE_FORMAT, frequency_penalty=1.5),
    ]
    plain = await batched.generate(asked(FRUITS))
    first, beside = await asyncio.gather(batched.generate(penalized[0]), batched.generate(penalized[0]))
    replies = [reply(first)] + [reply(await batched.generate(r)) for r in penalized[1:]]
    assert first.text == beside.text != plain.text
    assert _repeated_tokens(batched, first.text) < _repeated_tokens(batched, plain.text)
    assert replies[1][1] == [{"url": "http://example.com/page"}] and replies[1][2] == "tool_calls"
    assert set(json.loads(replies[2][0])) == {"description"}
    serial = LlamaCppBackend(str(model_path), options=LlamaOptions(parallel=0))
    try:
        assert [reply(await serial.generate(r)) for r in penalized] == replies
    finally:
        await serial.close()


def _repeated_tokens(backend: LlamaCppBackend, text: str) -> int:
    assert backend._handle is not None
    tokens = backend._handle.llm.tokenize(text.encode(), add_bos=False)
    return len(tokens) - len(set(tokens))


class _Logits:
    """One step's logits for one row, as StepLogits hands them to a sampler."""

    def __init__(self, logits: dict[int, float], n_vocab: int = 16) -> None:
        self.logits = np.full(n_vocab, -5.0, dtype=np.float32)
        for token, logit in logits.items():
            self.logits[token] = logit

    def row(self, index: int) -> Any:
        return self.logits

    def best(self, index: int) -> int:
        return int(self.logits.argmax())


def test_the_penalties_count_the_prompts_last_tokens_and_each_pick_once() -> None:
    import llama_cpp

    step = _Logits({1: 10.0, 2: 9.5, 3: 8.8})

    def picks(history: list[int], n: int = 3) -> list[int]:
        sampler = SequenceSampler(llama_cpp, None, 16, 0.0, 0, frequency_penalty=1.0, history=history)
        try:
            return [sampler.sample(None, 0, step) for _ in range(n)]  # type: ignore[arg-type]
        finally:
            sampler.close()

    filler = [5] * PENALTY_LAST_N
    assert picks([1, *filler], 1) == [1]  # 65 tokens back: out of the window
    # 1 came once in the prompt's last 64 (10 - 1 < 9.5); then 2 once (8.5), so 1 (9.0); then 1
    # twice (8.0), so 3 (8.8): each pick counted once, as the grammar or a draft leaves it.
    assert picks([*filler[1:], 1]) == [2, 1, 3]
    plain = SequenceSampler(llama_cpp, None, 16, 0.0, 0, history=[1] * 8)
    assert plain.penalties is None and plain.sample(None, 0, step) == 1  # type: ignore[arg-type]
    plain.close()


async def test_a_prompt_that_begins_as_an_earlier_one_evaluates_only_the_rest(
    batched: LlamaCppBackend,
) -> None:
    await batched.generate(GenerationRequest([{"role": "user", "content": "Say hi."}], max_tokens=2))
    assert batched._handle is not None and batched._handle.engine is not None
    llm, engine = batched._handle.llm, batched._handle.engine
    prompt = llm.tokenize(
        b"<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n", special=True
    )

    def run() -> tuple[str, int]:
        job = engine.submit(prompt, 12, 0.0, 0)
        text = "".join(piece for piece, _reason in completion(job, [], lambda: False))
        return text, job.reused

    first, reused_first = await asyncio.to_thread(run)
    second, reused_second = await asyncio.to_thread(run)
    assert reused_first < len(prompt) - 1
    assert reused_second == len(prompt) - 1  # all but the token whose logits it needs
    assert second == first != ""


# --- over the socket ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    with started_agent({"WAYSTATION_CONNECTIVITY__MODE": "offline"}) as a:
        yield a


def streamed(agent: Agent, prompt: str) -> dict[str, Any]:
    body = {"prompt": prompt, "stream": True, "tool_choice": "none", "max_tokens": MAX_TOKENS}
    with agent.client(timeout=120.0) as client, client.stream("POST", "/v1/turns", json=body) as response:
        assert response.status_code == 200
        events = list(sse_events(response.iter_lines()))
    done = events[-1].data
    assert events[-1].event == "done" and done["status"] == "ok", events[-1]
    assert "".join(e.data["text"] for e in events if e.event == "token") == done["text"] != ""
    return dict(done)


def test_four_streams_over_the_socket_each_get_their_own_text(agent: Agent) -> None:
    prompts = [r.messages[0]["content"] for r in requests() if not r.tools and not r.stop][:4]
    alone = [streamed(agent, p)["text"] for p in prompts]
    done: dict[int, dict[str, Any]] = {}
    seen: list[Any] = []
    threads = [
        threading.Thread(target=lambda i=i: done.update({i: streamed(agent, prompts[i])})) for i in range(4)
    ]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        seen.extend(row["sequences"] for row in agent.api("GET", "/v1/models/loaded").json())
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert [done[i]["text"] for i in range(4)] == alone
    assert max(seen, default=0) > 1, "generated at once, not one after another"
    (row,) = agent.api("GET", "/v1/models/loaded").json()
    assert (row["parallel"], row["sequences"]) == (4, 0)


def test_models_ps_counts_the_requests_waiting_for_a_sequence() -> None:
    from waystation.cli.commands.models import _sequences

    assert _sequences({"parallel": 4, "sequences": 4, "waiting": 2}) == "4/4 +2 waiting"
    assert _sequences({"parallel": 0, "sequences": 1, "waiting": 1}) == "serial +1 waiting"
    assert _sequences({"parallel": 4, "sequences": 1, "waiting": 0}) == "1/4"


def test_models_ps_shows_the_sequences(agent: Agent) -> None:
    assert agent.api("POST", "/v1/turns", json={"prompt": "Say hi.", "max_tokens": 2}).status_code == 200
    out = cli(agent.home, "models", "ps").stdout
    assert "SEQUENCES" in out and "0/4" in out, out
    # no turn parked here: no model state kept on disk, of the 1024 MB it may keep
    (row,) = agent.api("GET", "/v1/models/loaded").json()
    assert row["saved_state"] == {"entries": 0, "bytes": 0, "limit_bytes": 1024 * 10**6}
    assert "SAVED" in out and "0 · " in out, out


# --- draftless speculation ------------------------------------------------------------------------

PAGE = (
    "The harbour of Port Elling was built in 1852. Its lighthouse stands on the north pier and is "
    "painted red and white. Ferries leave for the islands every morning at seven, and the fish "
    "market opens at six on weekdays. The harbour master's office is next to the customs house."
)


def test_a_draft_is_what_followed_the_last_n_gram_before() -> None:
    drafter = Drafter()
    drafter.extend([1, 2, 3, 4, 5, 6, 9, 1, 2, 3])
    assert drafter.draft() == [4, 5]  # short until a draft has been kept whole
    drafter.scored(2, 2)
    assert drafter.draft() == [4, 5, 6, 9]
    assert drafter.draft(limit=1) == [4]
    drafter.scored(4, 4)
    assert drafter.draft() == [4, 5, 6, 9, 1, 2, 3]  # up to the end of the history
    drafter.scored(7, 0)
    assert drafter.draft() == [4]  # after a miss: one more than it kept
    drafter.extend([7])
    assert drafter.draft() == []  # 2, 3, 7 never occurred before


def test_a_sequence_drafts_only_while_its_guesses_pay() -> None:
    drafter = Drafter()
    drafter.extend([1, 2, 3, 4, 1, 2, 3])
    assert drafter.rate == 0.5
    assert drafter.draft(needed=0.7) == []  # not sent: the guess (4) is checked instead
    drafter.extend([8])  # the model picked another token
    assert drafter.rate < 0.5
    copied = 0
    while not (draft := drafter.draft(needed=0.7)):  # it copies: each checked guess comes true
        drafter.extend([4, 1, 2, 3])
        copied += 1
    assert draft == [4, 1] and drafter.rate >= 0.7 and copied < 10  # drafting again, soon


def test_a_sequence_drafts_only_while_it_decodes_alone() -> None:
    assert break_even(CPU_ROW_SHARE, 1) == pytest.approx(0.4)  # SmolLM2 on 2 cores: +4.3 of 10.7 ms
    assert break_even(GPU_ROW_SHARE, 1) < 0.1  # rows nearly free
    # Beside others a kept draft saves only its row, the batch's steps go on: no share pays.
    assert break_even(CPU_ROW_SHARE, 2) == break_even(GPU_ROW_SHARE, 4) == math.inf
    drafter = Drafter()
    drafter.extend([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3])
    assert drafter.draft(needed=break_even(GPU_ROW_SHARE, 2)) == []  # its guess (4) is checked instead
    assert drafter.draft(needed=break_even(GPU_ROW_SHARE, 1)) == [4, 1]


async def test_speculation_keeps_the_greedy_reply_and_drafts_from_the_page(model_path: Path) -> None:
    """The same greedy reply with drafts and without, penalized too (a draft's rows are sampled
    in turn: the penalties take in the tokens kept, never a draft token dropped)."""
    asked = GenerationRequest(
        [{"role": "user", "content": f"{PAGE}\n\nRepeat the text above word for word."}], max_tokens=48
    )
    penalized = dataclasses.replace(asked, presence_penalty=0.3)
    replies, penalized_replies, penalized_drafts = {}, {}, (0, 0)
    for speculative in ("off", "auto"):
        backend = LlamaCppBackend(str(model_path), options=LlamaOptions(parallel=4, speculative=speculative))
        try:
            replies[speculative] = reply(await backend.generate(asked))
            drafted, accepted = backend.drafts
            penalized_replies[speculative] = reply(await backend.generate(penalized))
            penalized_drafts = (backend.drafts[0] - drafted, backend.drafts[1] - accepted)
        finally:
            await backend.close()
        assert (drafted > 0) is (speculative == "auto")
    assert replies["auto"] == replies["off"]
    assert accepted > 0.5 * drafted, (accepted, drafted)
    assert penalized_replies["auto"] == penalized_replies["off"] != replies["off"]
    assert penalized_drafts[0] > penalized_drafts[1] > 0  # drafts kept and drafts dropped
