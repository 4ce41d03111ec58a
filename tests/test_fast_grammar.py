"""The check-first grammar sampler (adapters/models/fast_grammar.py) on the real embedded model:
greedy decoding under a grammar gives exactly the text llama-cpp-python's own chain gives, for a
tool call and for an answer, and the output still follows the grammar."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from waystation.adapters.models import fast_grammar
from waystation.adapters.models.base import tool_call_schema
from waystation.adapters.models.embedded import default_model_path
from waystation.adapters.tools import default_tools
from waystation.station.turns.calls import offer

URL = "http://127.0.0.1:9/page/Harbour"
PROMPTS = [
    f"<|im_start|>user\nFetch {URL} and tell me its title.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWrite a poem about the sea.<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def models() -> Iterator[tuple[Any, Any]]:
    from llama_cpp import Llama

    plain = Llama(str(default_model_path()), n_ctx=1024, verbose=False)
    checked = Llama(str(default_model_path()), n_ctx=1024, verbose=False)
    fast_grammar.install(checked)
    yield plain, checked
    plain.close()
    checked.close()


def grammar() -> Any:
    from llama_cpp.llama_grammar import LlamaGrammar

    specs, _ = offer(default_tools(), "auto", [URL], [])
    return LlamaGrammar.from_json_schema(json.dumps(tool_call_schema(specs, "auto")), verbose=False)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_same_text_as_the_full_grammar(models: tuple[Any, Any], prompt: str) -> None:
    plain, checked = models
    texts = [
        llm.create_completion(prompt, max_tokens=48, temperature=0, grammar=grammar())["choices"][0]["text"]
        for llm in (plain, checked)
    ]
    assert texts[0] == texts[1] and texts[0].lstrip().startswith("{")


def test_other_sampling_keeps_llama_cpp_pythons_chain(models: tuple[Any, Any]) -> None:
    _, checked = models
    free = checked.create_completion(PROMPTS[1], max_tokens=8, temperature=0)["choices"][0]["text"]
    warm = checked.create_completion(PROMPTS[1], max_tokens=8, temperature=0.7, seed=1, grammar=grammar())
    assert free and warm["choices"][0]["text"].lstrip().startswith("{")


LIST_PROMPT = "<|im_start|>user\nName some colors.<|im_end|>\n<|im_start|>assistant\n"
LIST = {"type": "object", "properties": {"colors": {"type": "array", "items": {"type": "string"}}}}


@pytest.mark.parametrize("temperature", [0.0, 0.7], ids=["greedy", "sampled"])
def test_a_resumed_grammar_goes_on_from_the_text_it_matched(
    models: tuple[Any, Any], temperature: float
) -> None:
    """The reply so far is the end of the prompt, the grammar has matched it: what the model
    writes next completes it under the same rules (on either sampling chain)."""
    from llama_cpp.llama_grammar import LlamaGrammar

    _, checked = models
    rules = LlamaGrammar.from_json_schema(json.dumps(LIST), verbose=False)
    so_far = '{"colors": ["red", "blue"]'  # an array closed early, as unique_items.py closes one
    matched = checked.tokenize(so_far.encode(), add_bos=False)
    assert fast_grammar.accepts(checked, rules, matched)
    rest = checked.create_completion(
        checked.tokenize(LIST_PROMPT.encode(), add_bos=False, special=True) + matched,
        max_tokens=16,
        temperature=temperature,
        seed=1,
        grammar=fast_grammar.resumed(rules, matched),
    )["choices"][0]["text"]
    assert json.loads(so_far + rest) == {"colors": ["red", "blue"]}


def test_tokens_the_grammar_refuses_are_found_before_it_is_made_to_take_them(models: tuple[Any, Any]) -> None:
    from llama_cpp.llama_grammar import LlamaGrammar

    _, checked = models
    rules = LlamaGrammar.from_json_schema(json.dumps({**LIST, "required": ["colors"]}), verbose=False)
    assert not fast_grammar.accepts(checked, rules, checked.tokenize(b'{"shapes"', add_bos=False))
    tight = LlamaGrammar.from_json_schema(
        json.dumps({"type": "array", "items": {"type": "string"}, "minItems": 3}), verbose=False
    )
    assert not fast_grammar.accepts(checked, tight, checked.tokenize(b'["a", "b"]', add_bos=False))
    assert fast_grammar.accepts(checked, tight, checked.tokenize(b'["a", "b", "c"]', add_bos=False))


def test_a_grammar_llama_cpp_refuses_is_found_before_it_samples_without_one(models: tuple[Any, Any]) -> None:
    """Past 1,000 nested repetitions llama.cpp's parser refuses the grammar and sampling goes on
    with none at all; `parses` says so, so the backend can refuse the schema instead."""
    from llama_cpp.llama_grammar import LlamaGrammar

    _, checked = models
    for length, parses in ((1_000, True), (1_001, False)):
        schema = {"type": "object", "properties": {"x": {"type": "string", "maxLength": length}}}
        grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        assert fast_grammar.parses(checked, grammar) is parses
