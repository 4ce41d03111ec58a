"""A prompt's size without holding the model for long (adapters/models/prompt_size.py), on the
real embedded model: cut into pieces after its end-of-turn token, a prompt tokenizes exactly as a
whole; a prompt whose characters alone cannot fit is refused before it is templated; and a chat
body of more messages than OpenAI takes is refused before it is read further (issue 20, item 9:
40,000 tiny messages held the model 118 s)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from waystation.adapters.models import prompt_size
from waystation.adapters.models.base import GenerationRequest
from waystation.adapters.models.embedded import default_model_path
from waystation.adapters.models.llamacpp import LlamaCppBackend
from waystation.agent.api_openai_request import MAX_MESSAGES, MAX_TOOLS, chat_request
from waystation.errors import PromptTooLong, TooManyItems

END = "<|im_end|>"  # SmolLM2's end of turn, one special token


@pytest.fixture(scope="module")
def llm() -> Iterator[Any]:
    from llama_cpp import Llama

    model = Llama(str(default_model_path()), n_ctx=512, verbose=False)
    yield model
    model.close()


def chatml(count: int) -> str:
    return "".join(f"<|im_start|>user\nmessage {i}, with some words{END}\n" for i in range(count))


def test_a_prompt_tokenized_in_pieces_is_the_whole_prompts_tokens(llm: Any) -> None:
    text = chatml(1_500)  # ~70,000 characters: several pieces
    whole = llm.tokenize(text.encode(), add_bos=False, special=True)
    assert len(text) > 3 * prompt_size.PIECE_CHARS
    assert prompt_size.tokenized(llm, text, END) == whole
    assert prompt_size.tokenized(llm, text, "") == whole


def test_only_a_special_token_is_a_boundary(llm: Any) -> None:
    assert prompt_size.special_boundary(llm, END) == END
    assert prompt_size.special_boundary(llm, "end") == ""
    assert prompt_size.special_boundary(llm, "") == ""


async def test_a_prompt_that_cannot_fit_is_refused_from_its_characters() -> None:
    """40,000 special tokens in one message took 6 s to tokenize before the refusal, the model
    held all the while; counted from the characters it is refused before any templating."""
    backend = LlamaCppBackend(str(default_model_path()), n_ctx=512)
    flood = [{"role": "user", "content": END * 40_000}]
    try:
        with pytest.raises(PromptTooLong) as caught:
            await backend.generate(GenerationRequest(messages=flood, max_tokens=8))
        assert caught.value.at_least
        assert str(caught.value) == "the prompt is at least 6250 tokens; the model's context holds 504"
        # One that might fit is counted exactly, as before.
        with pytest.raises(PromptTooLong) as caught:
            await backend.generate(GenerationRequest(messages=[{"role": "user", "content": END * 600}]))
        assert not caught.value.at_least and caught.value.tokens > 600
    finally:
        await backend.close()


def test_more_messages_or_tools_than_openai_takes_are_refused_naming_the_cap() -> None:
    many = [{"role": "user", "content": "hi"}] * 40_000
    with pytest.raises(TooManyItems) as caught:
        chat_request({"messages": many})
    assert caught.value.code == "array_above_max_length" and caught.value.http_status == 400
    assert str(caught.value) == f"messages: array too long, 40000 items; at most {MAX_MESSAGES}"
    chat_request({"messages": many[:MAX_MESSAGES]})
    tool = {"type": "function", "function": {"name": "f"}}
    tools = [{**tool, "function": {"name": f"f{i}"}} for i in range(MAX_TOOLS + 1)]
    with pytest.raises(TooManyItems, match=f"^tools: array too long, 129 items; at most {MAX_TOOLS}$"):
        chat_request({"messages": many[:1], "tools": tools})
