"""Parked turns' model state on disk (`[model] saved_state_mb`: adapters/models/saved_state.py,
resume_state.py, batching.py).

The store alone (no model): the longest saved prefix of a prompt, the least recently used file
dropped past the budget, a state larger than the budget never written, and a file that does not
match (a flipped byte, a truncated file, another model file, other settings) never handed out
and dropped. Then the real embedded SmolLM2: a parked turn's answer prefix is saved, and the
resumed answer after a restart (a new backend on the same directory) restores it and is the
greedy answer of a full prefill; a corrupt, truncated or other-settings file gives that same
answer from a full prefill, the file dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from support.agentproc import Receiver, started_agent, wait_for

from waystation.adapters.models import resume_state
from waystation.adapters.models.base import GenerationRequest
from waystation.adapters.models.embedded import default_model_path
from waystation.adapters.models.llamacpp import LlamaCppBackend, LlamaOptions
from waystation.adapters.models.saved_state import MIN_TOKENS, SUFFIX, SavedStates, fingerprint

SETTINGS = {"context": 4096, "type_k": 1, "type_v": 1}


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 20)
    return path


def store(root: Path, model: Path, limit: int = 10_000_000, **settings: Any) -> SavedStates:
    return SavedStates(root, limit, model, fingerprint(model), {**SETTINGS, **settings})


def tokens(start: int, n: int = MIN_TOKENS + 6) -> list[int]:
    return list(range(start, start + n))


def files(root: Path) -> list[Path]:
    return sorted(root.glob(f"*{SUFFIX}"))


def test_the_longest_saved_prefix_of_a_prompt_is_found_after_a_restart(
    tmp_path: Path, model_file: Path
) -> None:
    saved = store(tmp_path, model_file)
    short, long = tokens(0), tokens(0, 200)
    assert saved.write(short, b"short state") and saved.write(long, b"long state")
    again = store(tmp_path, model_file)  # a restart: the index is read from the files' headers
    prompt = [*long[:150], 9999, 9998]
    entry = again.longest(prompt)
    assert entry is not None and entry.tokens == tuple(long)
    found = again.read(entry, prompt)
    assert found is not None and (found.blob, found.shared) == (b"long state", 150)
    assert again.longest(prompt, better_than=150) is None  # a slot shares as much already
    assert again.longest(tokens(5000)) is None
    assert again.longest(short[: MIN_TOKENS - 1]) is None  # too short to be worth reading
    assert again.usage() == (2, sum(p.stat().st_size for p in files(tmp_path)))


def test_past_the_budget_the_least_recently_used_is_dropped(tmp_path: Path, model_file: Path) -> None:
    blob = bytes(3000)
    saved = store(tmp_path, model_file, limit=10_000)
    first, second, third = tokens(0), tokens(1000), tokens(2000)
    assert saved.write(first, blob) and saved.write(second, blob)
    entry = saved.longest(first)
    assert entry is not None and saved.read(entry, first) is not None  # used: now the most recent
    assert saved.write(third, blob)  # a third does not fit beside both: `second` goes
    assert saved.usage()[0] == 2
    assert saved.longest(second) is None
    assert saved.longest(first) is not None and saved.longest(third) is not None
    assert sum(p.stat().st_size for p in files(tmp_path)) <= 10_000
    assert not saved.write(tokens(3000), bytes(20_000))  # larger than the whole budget
    assert saved.usage()[0] == 2


def _flip_a_blob_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


@pytest.mark.parametrize("damage", [_flip_a_blob_byte, _truncate])
def test_a_damaged_file_is_never_handed_out_and_is_dropped(
    tmp_path: Path, model_file: Path, damage: Any
) -> None:
    saved = store(tmp_path, model_file)
    prefix = tokens(0)
    assert saved.write(prefix, b"state " * 100)
    entry = saved.longest(prefix)
    assert entry is not None
    (path,) = files(tmp_path)
    damage(path)
    assert saved.read(entry, prefix) is None  # found in the index, refused when read
    assert files(tmp_path) == [] and saved.longest(prefix) is None


def test_a_file_of_another_model_file_or_other_settings_is_not_used(tmp_path: Path, model_file: Path) -> None:
    prefix = tokens(0)
    assert store(tmp_path, model_file).write(prefix, b"state")
    assert store(tmp_path, model_file, context=2048).longest(prefix) is None  # other settings
    assert files(tmp_path) == []  # dropped: this model's files under older settings
    assert store(tmp_path, model_file).write(prefix, b"state")
    model_file.write_bytes(model_file.read_bytes()[::-1])  # the file changed (a new pull)
    assert store(tmp_path, model_file).longest(prefix) is None and files(tmp_path) == []
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF other")
    assert store(tmp_path, other).write(prefix, b"other's")
    assert store(tmp_path, model_file).longest(prefix) is None
    assert len(files(tmp_path)) == 1  # another model's file is its own to keep


def test_a_renamed_file_that_says_other_tokens_is_refused(tmp_path: Path, model_file: Path) -> None:
    saved = store(tmp_path, model_file)
    a, b = tokens(0), tokens(500)
    assert saved.write(a, b"a") and saved.write(b, b"b")
    entry_a = saved.longest(a)
    assert entry_a is not None
    path_a = tmp_path / entry_a.name
    header = next(p for p in files(tmp_path) if p != path_a)
    header.replace(path_a)  # b's file under a's name
    assert saved.read(entry_a, a) is None and not path_a.exists()


# --- with the real model ----------------------------------------------------------------------------

SYSTEM = (
    "You are the harbour office's assistant in Port Elling. The harbour was built in 1852 and "
    "its lighthouse, on the north pier, is painted red and white. Ferries leave for the islands "
    "every morning at seven; the fish market opens at six on weekdays and at eight on Saturdays. "
    "The harbour master's office is next to the customs house and is open from nine to five. "
) * 2
PARKED: list[dict[str, Any]] = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "When does the fish market open on Saturdays?"},
    {"role": "assistant", "content": "At eight on Saturdays."},
    {"role": "user", "content": "Fetch http://example.com/ferry and tell me when the ferry leaves."},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "web_fetch", "arguments": '{"url": "http://example.com/ferry"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "deferred", "task_id": "t_1"}'},
]
ANSWER_TOKENS = 96  # long enough for a prompt batched otherwise to part in a late token
RESUMED: list[dict[str, Any]] = [
    *PARKED[:-1],
    {**PARKED[-1], "content": "Ferry timetable: the island ferry leaves at 7:00."},
]


def answer(messages: list[dict[str, Any]]) -> GenerationRequest:
    return GenerationRequest(messages, tool_choice="none", max_tokens=ANSWER_TOKENS)


async def _run(states: Path | None, **options: Any) -> tuple[str, int]:
    """The resumed answer from a fresh backend (as after a restart), and how many prompts it
    started from a saved state."""
    settings = LlamaOptions(parallel=2, saved_state_mb=1024 if states else 0, **options)
    backend = LlamaCppBackend(str(default_model_path()), options=settings, states_dir=states)
    try:
        text = (await backend.generate(answer(RESUMED))).text
        return text, backend.state_counts[1]
    finally:
        await backend.close()


@pytest.fixture(scope="module")
def parked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int], str]:
    """A parked turn kept its answer prefix: the directory, the tokens saved, and the resumed
    answer from the same backend, whose slot still held the prefix (evaluated as saved)."""
    states = tmp_path_factory.mktemp("parked")

    async def park() -> str:
        settings = LlamaOptions(parallel=2, saved_state_mb=1024)
        backend = LlamaCppBackend(str(default_model_path()), options=settings, states_dir=states)
        try:
            await backend.generate(GenerationRequest([{"role": "user", "content": "Hi."}], max_tokens=1))
            await backend.keep_for_resume(answer(PARKED))
            await backend.saved()
            text = (await backend.generate(answer(RESUMED))).text
            assert backend.state_counts == (1, 0)  # saved, and not read back: the slot had it
            return text
        finally:
            await backend.close()

    in_process = asyncio.run(park())
    (path,) = files(states)
    raw = path.read_bytes()
    magic, _version, length = struct.unpack("<8sII", raw[:16])
    assert magic == b"WSKVSTAT"
    return states, list(json.loads(raw[16 : 16 + length])["tokens"]), in_process


@pytest.fixture
def states(tmp_path: Path, parked: tuple[Path, list[int], str]) -> Path:
    """A copy of the parked turn's saved state, for one test to restore or damage."""
    for path in files(parked[0]):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


@pytest.fixture(scope="module")
def cold() -> str:
    """The resumed answer from a full prefill (no saved state)."""
    text, _ = asyncio.run(_run(None))
    assert text
    return text


async def test_a_restored_state_gives_the_cold_answer_token_for_token(
    states: Path, parked: tuple[Path, list[int], str], cold: str
) -> None:
    """Restored (after a restart, or in the process that saved it) or evaluated whole, the
    resumed answer is the same: the whole prompt is evaluated in the batches a restored prefix
    gives (resume_state.split_point), as llama.cpp's sums depend on them."""
    _, kept, in_process = parked
    assert len(kept) > 150  # the system prompt and the earlier exchange
    text, restored = await _run(states)  # as after a restart
    assert restored == 1, "the resumed answer started from the saved state"
    assert text == in_process == cold != ""


async def test_a_prompt_evaluated_whole_is_cut_where_a_restored_prefix_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No state saved (`saved_state_mb = 0`), the resumed answer's prompt is still evaluated in
    the batches a restoration would give: its answer prefix, then the rest. A prompt with no tool
    results to answer from is evaluated whole, as llama-server evaluates it."""
    import llama_cpp

    decode, batches = llama_cpp.llama_decode, []

    def recorded(ctx: Any, batch: Any) -> int:
        batches.append(batch.n_tokens)
        return int(decode(ctx, batch))

    monkeypatch.setattr(llama_cpp, "llama_decode", recorded)
    settings = LlamaOptions(parallel=2, saved_state_mb=0)
    backend = LlamaCppBackend(str(default_model_path()), options=settings)
    try:
        request = dataclasses.replace(answer(RESUMED), max_tokens=2)
        await backend.generate(request)
        assert backend._handle is not None
        prefix = resume_state.answer_prefix(backend._handle, request)
        asked = dataclasses.replace(request, messages=RESUMED[:4])  # the question, before its tool call
        assert resume_state.answer_prefix(backend._handle, asked) == prefix
        assert resume_state.split_point(backend._handle, request, [*prefix, 1]) == len(prefix)
        assert resume_state.split_point(backend._handle, asked, [*prefix, 1]) == 0
        cut = len(prefix)
    finally:
        await backend.close()
    assert cut >= MIN_TOKENS
    assert batches[0] == cut and batches[1] > 1, batches  # (the whole prompt is under one batch)


@pytest.mark.parametrize("damage", ["flipped", "refused"])
async def test_a_state_that_does_not_match_falls_back_to_a_full_prefill(
    states: Path, cold: str, parked: tuple[Path, list[int], str], damage: str
) -> None:
    (path,) = files(states)
    if damage == "flipped":  # caught by its checksum
        _flip_a_blob_byte(path)
    else:  # whole and checked, but not a state llama.cpp takes (cut short, checksum made anew)
        raw = path.read_bytes()
        length = struct.unpack("<8sII", raw[:16])[2]
        blob = raw[16 + length :]
        path.unlink()
        header = json.loads(raw[16 : 16 + length])
        again = SavedStates(states, 10**9, default_model_path(), header["fingerprint"], header["settings"])
        assert again.write(parked[1], blob[: len(blob) // 2])
    text, restored = await _run(states)
    assert restored == 0 and text == cold
    assert files(states) == []  # dropped


# --- a real agent: park, kill -9, restart, resume -------------------------------------------------


def test_a_parked_turn_resumes_from_its_saved_state_after_kill_9() -> None:
    receiver = Receiver()
    try:
        with started_agent({"WAYSTATION_CONNECTIVITY__MODE": "offline"}) as agent:
            url = receiver.url("/ok/f")
            body = {
                "system": SYSTEM,
                "prompt": f"Fetch {url} and tell me when the ferry leaves.",
                "tool_choice": "required",
                "max_tokens": 64,
                "max_steps": 2,
            }
            turn = agent.api("POST", "/v1/turns", json=body, timeout=120).json()
            assert turn.get("status") == "parked", turn
            saved = wait_for(
                lambda: (
                    (row := agent.api("GET", "/v1/models/loaded").json()[0])["saved_state"]["entries"]
                    and row["saved_state"]
                ),
                timeout=60,
                what="the parked turn's state on disk",
            )
            assert saved["bytes"] > 0 and saved["limit_bytes"] == 1024 * 10**6
            agent.kill()
            agent.start()
            agent.set_mode("online")
            wait_for(
                lambda: (
                    len(
                        [
                            r
                            for r in agent.api("GET", "/v1/receipts").json()
                            if r["turn_id"] == turn["turn_id"]
                        ]
                    )
                    >= 3
                ),  # the parked turn's, the task's, the resumed turn's
                timeout=120,
                what="the resumed turn",
            )
            metrics = agent.api("GET", "/metrics").text
            assert 'waystation_model_saved_states{kind="restored"} 1.0' in metrics, metrics
    finally:
        receiver.close()
