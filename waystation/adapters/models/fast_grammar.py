"""Grammar-constrained greedy decoding that asks the grammar about the model's own choice first.

llama-cpp-python puts llama.cpp's grammar sampler in its chain before the pick, so the grammar
judges every token of the vocabulary at every step (49,152 for SmolLM2: most of a constrained
token's time here). llama.cpp's own sampler (common_sampler_sample) does better, and so does this:
take the best token, ask the grammar about that one token, and only when it refuses it apply the
grammar to them all. For greedy decoding the token is the same either way (the grammar only
removes candidates, so an allowed best stays the best), so the output is identical.

`install(llm)` makes a Llama build this chain whenever it decodes greedily under a grammar; any
other sampling keeps llama-cpp-python's own chain. Either way the chain's penalties (OpenAI's
frequency and presence penalties) start from the prompt's last tokens, as llama-server's do and
the batch engine's (sampling.py); llama-cpp-python's own start from nothing.

It also lets a generation resume a grammar part-way: `resumed(grammar, tokens)` is the grammar
with those tokens already matched (the reply so far, which the next generation's prompt ends
with), so a reply can be taken back to an earlier point and continued from there under the same
rules (unique_items.py). `accepts` checks such tokens first: llama.cpp aborts the process when a
grammar is made to accept a token it refuses.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


class _CheckFirstGrammar:
    """A sampler for a llama.cpp chain, wrapping the chain's grammar sampler."""

    def __init__(self, llama_cpp: Any, grammar: Any) -> None:
        self._lib = llama_cpp
        self._grammar = grammar  # a llama_sampler_p from llama_sampler_init_grammar
        self._one = llama_cpp.llama_token_data()
        self._one_array = llama_cpp.llama_token_data_array(
            data=ctypes.pointer(self._one), size=1, selected=-1, sorted=False
        )
        iface = llama_cpp.llama_sampler_i()
        # Keep the callbacks referenced for as long as the chain may call them.
        self._callbacks = (
            llama_cpp.llama_sampler_i_apply(lambda _s, cur: self._apply(cur)),
            llama_cpp.llama_sampler_i_accept(
                lambda _s, token: llama_cpp.llama_sampler_accept(grammar, token)
            ),
            llama_cpp.llama_sampler_i_reset(lambda _s: llama_cpp.llama_sampler_reset(grammar)),
        )
        iface.apply, iface.accept, iface.reset = self._callbacks
        iface.name = llama_cpp.llama_sampler_i_name(0)
        iface.clone = llama_cpp.llama_sampler_i_clone(0)
        iface.free = llama_cpp.llama_sampler_i_free(0)  # the grammar is freed by `close`
        self._iface = iface
        self.sampler = llama_cpp.llama_sampler()
        self.sampler.iface = ctypes.pointer(iface)
        self.sampler.ctx = None

    def _apply(self, cur: Any) -> None:
        array = cur.contents
        raw = (ctypes.c_char * (array.size * TOKEN_DATA.itemsize)).from_address(
            ctypes.addressof(array.data.contents)
        )
        data = np.frombuffer(raw, dtype=TOKEN_DATA)  # a view: no copy of the 49,152 candidates
        best = int(np.argmax(data["logit"]))
        self._one.id, self._one.logit, self._one.p = int(data["id"][best]), float(data["logit"][best]), 0.0
        self._lib.llama_sampler_apply(self._grammar, ctypes.byref(self._one_array))
        if math.isinf(self._one.logit):  # refused: let the grammar judge every candidate
            self._lib.llama_sampler_apply(self._grammar, cur)

    def close(self) -> None:
        self._lib.llama_sampler_free(self._grammar)


def install(llm: Any) -> None:
    """Decode greedily under a grammar with the check-first sampler, and start the penalties from
    the prompt (see the module's doc)."""
    import llama_cpp
    from llama_cpp import _internals

    default, default_generate = llm._init_sampler, llm.generate
    samplers: Any = _internals.LlamaSampler  # untyped in llama-cpp-python
    prompt: list[int] = []  # the tokens of the generation under way (one at a time on this Llama)

    def generate(tokens: Sequence[int], *args: Any, **kwargs: Any) -> Any:
        prompt[:] = tokens  # (its sampler is built when the generator first runs)
        return default_generate(tokens, *args, **kwargs)

    def init_sampler(**options: Any) -> Any:
        chain = chain_for(**options)
        accepted = getattr(options.get("grammar"), _ACCEPTED, ())  # a resumed grammar's tokens
        if options.get("frequency_penalty") or options.get("presence_penalty"):
            penalties = llama_cpp.llama_sampler_chain_get(chain.sampler, 0)
            assert llama_cpp.llama_sampler_name(penalties) == b"penalties"  # llama-cpp-python's first
            # The prompt ends with the accepted tokens, which the whole chain takes in below.
            for token in prompt[: len(prompt) - len(accepted)][-llm.last_n_tokens_size :]:
                llama_cpp.llama_sampler_accept(penalties, token)
        for token in accepted:
            llama_cpp.llama_sampler_accept(chain.sampler, token)
        return chain

    def chain_for(**options: Any) -> Any:
        grammar = options.get("grammar")
        if grammar is None or options.get("temp", 0.8) != 0.0 or options.get("logits_processor"):
            return default(**options)
        chain = samplers()
        chain.add_penalties(
            n_vocab=llm._n_vocab,
            penalty_last_n=llm.last_n_tokens_size,
            penalty_repeat=options.get("repeat_penalty", 1.0),
            penalty_freq=options.get("frequency_penalty", 0.0),
            penalty_present=options.get("presence_penalty", 0.0),
        )
        inner = llama_cpp.llama_sampler_init_grammar(
            llm._model.vocab, grammar._grammar.encode(), grammar._root.encode()
        )
        check_first = _CheckFirstGrammar(llama_cpp, inner)
        llama_cpp.llama_sampler_chain_add(chain.sampler, ctypes.pointer(check_first.sampler))
        # The chain must not free what Python owns: remove it before the chain is freed (as
        # llama-cpp-python does for its own custom samplers), then free the grammar ourselves.
        chain.custom_samplers.append((llama_cpp.llama_sampler_chain_n(chain.sampler) - 1, check_first))
        chain._exit_stack.callback(check_first.close)
        chain.add_greedy()
        return chain

    llm._init_sampler = init_sampler
    llm.generate = generate


_ACCEPTED = "waystation_accepted"  # on a resumed grammar: the tokens it has matched already


def resumed(grammar: Any, tokens: Sequence[int]) -> Any:
    """The grammar with `tokens` already matched (check them with `accepts` first)."""
    from llama_cpp.llama_grammar import LlamaGrammar

    copy = LlamaGrammar(_grammar=grammar._grammar)
    copy._root = grammar._root
    setattr(copy, _ACCEPTED, list(tokens))
    return copy


def accepts(llm: Any, grammar: Any, tokens: Sequence[int]) -> bool:
    """Whether the grammar matches `tokens` from its start, each in turn."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(
        llm._model.vocab, grammar._grammar.encode(), grammar._root.encode()
    )
    one: Any = llama_cpp.llama_token_data()
    array = llama_cpp.llama_token_data_array(data=ctypes.pointer(one), size=1, selected=-1, sorted=False)
    try:
        for token in tokens:
            one.id, one.logit, one.p = token, 0.0, 0.0
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
            if math.isinf(one.logit):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return True
    finally:
        llama_cpp.llama_sampler_free(sampler)


def parses(llm: Any, grammar: Any) -> bool:
    """Whether llama.cpp's parser takes the grammar. Where it does not, its sampler is NULL and
    generation goes on with no grammar at all: the answer silently ignores the schema."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(
        llm._model.vocab, grammar._grammar.encode(), grammar._root.encode()
    )
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True
