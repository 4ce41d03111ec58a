"""llama.cpp through llama-cpp-python: GGUF files, the model's own chat template, streaming.

Tool calls are made reliable with a grammar: when tools are offered, sampling is constrained to
the JSON Schema of "a call to one of these tools (or, on auto, an answer)", so even a 135M model
produces a call that parses and names a real tool.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waystation.adapters.models import fast_grammar, grounding, prompt_size, resume_state
from waystation.adapters.models.base import (
    Generation,
    GenerationRequest,
    Message,
    TokenSink,
    ToolCall,
    ToolSpec,
    discard,
    parse_tool_reply,
    tool_instructions,
    urls_in,
    urls_to_call,
)
from waystation.adapters.models.batch_job import completion
from waystation.adapters.models.batching import BatchEngine
from waystation.adapters.models.chat_messages import answer_form, plain, with_system
from waystation.adapters.models.cpu_cores import physical_cores
from waystation.adapters.models.gguf_check import check_gguf, return_freed_memory
from waystation.adapters.models.json_objects import user_objects
from waystation.adapters.models.ngram import row_share
from waystation.adapters.models.reply_grammar import cut_answer, json_grammar, reply_schema
from waystation.adapters.models.sampling import sampler_options, sampler_seed
from waystation.adapters.models.saved_state import common_prefix
from waystation.adapters.models.stop import cut_at_stop
from waystation.adapters.models.threaded import Admission, ThreadedBackend
from waystation.adapters.models.unique_items import ArrayItems
from waystation.errors import ModelError, PromptTooLong

DEFAULT_CONTEXT = 4096
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Loaded:
    llm: Any  # llama_cpp.Llama
    formatter: Any  # llama_cpp.llama_chat_format.Jinja2ChatFormatter: the model's own template
    boundary: str  # a special token ending each turn, where a prompt is cut to tokenize it (prompt_size)
    context: int  # tokens of prompt and reply together, per sequence
    engine: BatchEngine | None = None  # `[model] parallel` > 0: every sequence goes through it
    # The evaluated state of system blocks that carry tool instructions, by their tokens: a tool
    # turn after some other turn restores it instead of evaluating the instructions again.
    warm: dict[tuple[int, ...], Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LlamaOptions:
    """What `[model]` sets for llama.cpp (config.ModelSettings has the why of each)."""

    context: int = DEFAULT_CONTEXT
    threads: int = 0  # 0: one per physical core
    gpu_layers: int = 0  # -1: all
    batch: int = 512
    flash_attention: str = "auto"  # auto | on | off
    mmap: bool = True
    mlock: bool = False
    parallel: int = 0  # sequences at once through batching.py; 0: one at a time, as llama-cpp-python does
    speculative: str = "auto"  # auto | off: n-gram drafts in batching.py (ngram.py)
    saved_state_mb: int = 0  # disk for parked turns' model state (resume_state.py); 0: off

    def llama_kwargs(self) -> dict[str, Any]:
        """Llama(...)'s keyword arguments. Prompt evaluation uses as many threads as decoding, as
        llama.cpp's own default (llama-cpp-python's would take every logical CPU for it)."""
        threads = self.threads or physical_cores()
        # llama-cpp-python passes on or off, not llama.cpp's per-device auto; the backends it is
        # built for here (CPU, CUDA, Metal) all have flash attention, and llama.cpp's auto turns it
        # on for them (measured on an H100: 0.77x -> 0.83x of llama-server's decode with it on).
        flash = self.flash_attention != "off"
        return {
            "n_ctx": self.context,
            "n_threads": threads,
            "n_threads_batch": threads,
            "n_gpu_layers": self.gpu_layers,
            "n_batch": self.batch,
            "flash_attn": flash,
            "use_mmap": self.mmap,
            "use_mlock": self.mlock,
        }


class LlamaCppBackend(ThreadedBackend[Loaded]):
    name = "llamacpp"

    def __init__(
        self,
        model_path: str,
        *,
        idle_unload_s: float = 0,
        n_ctx: int = DEFAULT_CONTEXT,
        options: LlamaOptions | None = None,
        admission: Admission | None = None,
        states_dir: Path | None = None,
    ) -> None:
        options = options or LlamaOptions(context=n_ctx)
        super().__init__(
            model_path, idle_unload_s=idle_unload_s, admission=admission, parallel=options.parallel
        )
        self.options = options
        self.states_dir = states_dir  # where parked turns' model state goes (None: nowhere)
        self._saving: set[asyncio.Future[bool]] = set()  # keep_for_resume's saves under way
        # What it generates with: the setting resolved now, llama.cpp's own report once loaded.
        self.threads: int = self.options.llama_kwargs()["n_threads"]

    def load_blocking(self) -> Loaded:
        path = Path(self.model_path)
        check_gguf(path)
        import llama_cpp  # imported here: the agent starts without paying for it
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        try:
            llm = llama_cpp.Llama(model_path=str(path), verbose=False, **self.options.llama_kwargs())
        except (ValueError, RuntimeError) as exc:
            raise ModelError(path, f"llama.cpp could not load it ({type(exc).__name__})") from None
        self.threads = llama_cpp.llama_n_threads(llm.ctx)
        fast_grammar.install(llm)  # tool calls decode as fast as text (see fast_grammar.py)
        template = llm.metadata.get("tokenizer.chat_template") or CHATML
        eos = llm.detokenize([llm.token_eos()], special=True).decode(errors="replace")
        bos = llm.detokenize([llm.token_bos()], special=True).decode(errors="replace")
        formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
        context = llm.n_ctx()
        engine = None
        if self.options.parallel > 0:
            share, drafts = row_share(self.options.gpu_layers), self.options.speculative != "off"
            engine = BatchEngine(llm, self.options.parallel, context, drafts, share)
            if self.states_dir is not None and self.options.saved_state_mb > 0:
                limit = self.options.saved_state_mb
                engine.states = resume_state.open_states(engine, path, self.states_dir, limit)
        return Loaded(llm, formatter, prompt_size.special_boundary(llm, eos), context, engine)

    @property
    def _engine(self) -> BatchEngine | None:
        """The loaded model's batch engine (None: not loaded, or `parallel = 0`)."""
        return self._handle.engine if self._handle is not None else None

    @property
    def drafts(self) -> tuple[int, int]:
        """Draft tokens of n-gram speculation since it loaded: (drafted, accepted)."""
        engine = self._engine
        return (engine.drafted, engine.accepted) if engine is not None else (0, 0)

    @property
    def saved_state(self) -> dict[str, Any] | None:
        """`models ps`'s saved state ({"entries", "bytes", "limit_bytes"}); None: off."""
        return resume_state.usage(self._engine)

    @property
    def state_counts(self) -> tuple[int, int]:
        """Prefixes saved to disk and restored from it since it loaded, for /metrics."""
        return resume_state.counts(self._engine)

    async def keep_for_resume(self, request: GenerationRequest) -> None:
        """A turn parked: keep the model's state of what its answer will start with (on disk,
        in the background: the park returns at once). Nothing while the model is not loaded."""
        handle = self._handle
        if handle is None or handle.engine is None or handle.engine.states is None:
            return
        saving = asyncio.ensure_future(asyncio.to_thread(resume_state.keep, handle, request))
        self._saving.add(saving)
        saving.add_done_callback(resume_state.failed)
        saving.add_done_callback(self._saving.discard)

    async def saved(self) -> None:
        """Once the saves under way are written (or have failed)."""
        if self._saving:
            await asyncio.wait(list(self._saving))

    async def _release_handle(self, loop: asyncio.AbstractEventLoop) -> None:
        engine = self._engine
        if self._closing and engine is not None:
            engine.cancel_saves()  # stopping: a cache is not worth the wait
        await self.saved()  # (an idle unload lets them finish: they use the loaded model)
        await super()._release_handle(loop)

    def unload_blocking(self, handle: Loaded) -> None:
        if handle.engine is not None:
            handle.engine.close()
        handle.llm.close()
        return_freed_memory()

    def generate_blocking(self, handle: Loaded, request: GenerationRequest, emit: TokenSink) -> Generation:
        llm = handle.llm
        tools = request.tools if request.tool_choice != "none" else ()
        answer_format = request.response_format
        # A step that may call a tool is a constrained JSON reply; an answer after tool results
        # is free text from them (grounding.py), as the model answers best.
        constrained = bool(tools)
        messages, formatted, prompt = self._prompt(handle, request, tools)
        grammar = None
        if constrained:
            # A URL still to call, else any the conversation named (the call is gated either way).
            urls = urls_to_call(list(request.messages)) or urls_in(messages)
            objects = user_objects(request.messages)
            schema = reply_schema(tools, request.tool_choice, answer_format, urls, objects)
            grammar = json_grammar(schema, request, llm)
        elif answer_format is not None:  # the answer is the JSON itself, streamed as text
            grammar = json_grammar(answer_format, request, llm)
        if constrained and handle.engine is None:  # the engine's slots keep prefixes themselves
            system = handle.formatter(messages=messages[:1]).prompt.encode()
            system_tokens = llm.tokenize(system, add_bos=False, special=True)
            _warm_prefix(handle, prompt[: common_prefix(prompt, system_tokens)])
        # A constrained reply is JSON for us (a call, or the answer inside it), not text for the
        # user: the client's stop strings apply to its answer, given out below.
        stop = _strings(formatted.stop) + ([] if constrained else list(request.stop))
        text, finish = self._decode(handle, prompt, request, grammar, stop, discard if constrained else emit)
        # Streamed pieces are not tokens (llama.cpp joins the tokens of one multi-byte character),
        # so the reply is counted by tokenizing it.
        completion_tokens = len(llm.tokenize(text.encode(), add_bos=False, special=True)) if text else 0
        tool_calls: list[ToolCall] = []
        if constrained:
            json_answer = answer_format is not None
            answer, tool_calls = parse_tool_reply(text, f"call_{os.urandom(6).hex()}", json_answer)
            if not tool_calls and answer == text:  # not a whole reply: cut off at max_tokens
                answer, finish = cut_answer(text, json_answer)
            if not tool_calls:
                answer, stopped = cut_at_stop(answer, request.stop)
                finish = "stop" if stopped else finish
            text = answer
            if text:
                emit(text)
        return Generation(
            text=text,
            tool_calls=tool_calls,
            prompt_tokens=len(prompt),
            completion_tokens=completion_tokens,
            finish_reason="tool_calls" if tool_calls else finish,
        )

    def _prompt(
        self, handle: Loaded, request: GenerationRequest, tools: Sequence[ToolSpec]
    ) -> tuple[list[Message], Any, list[int]]:
        """(messages, formatted, prompt tokens) of a generation: tool results in the form the
        model answers from, cut to fewer passages while the prompt would not fit the context."""
        llm = handle.llm
        room = handle.context - request.max_tokens
        budget = grounding.budget_for(handle.context, request.max_tokens)
        while True:
            if tools:
                messages = [plain(m) for m in grounding.trimmed(request.messages, budget)]
                messages = with_system(messages, tool_instructions(tools, request.tool_choice))
            else:
                messages = answer_form(grounding.grounded(request.messages, budget), request.response_format)
            size, counted = prompt_size.at_least(messages), False  # too long already? then no templating
            if size <= room:
                formatted = handle.formatter(messages=messages)
                prompt = prompt_size.tokenized(llm, formatted.prompt, handle.boundary)
                size, counted = len(prompt), True
                if size <= room:
                    return messages, formatted, prompt
            if budget <= grounding.CHUNK_CHARS or not grounding.has_any_results(request.messages):
                raise PromptTooLong(size, room, at_least=not counted)
            budget //= 2

    def _decode(
        self,
        handle: Loaded,
        prompt: list[int],
        request: GenerationRequest,
        grammar: Any,
        stop: list[str],
        emit: TokenSink,
    ) -> tuple[str, str]:
        """The reply's text, streamed to `emit` as it comes, and why it ended.

        Under a grammar, the first array item that repeats an earlier item of the same array
        ends that array (unique_items.py has why): the reply goes back to the end of the item
        before it, closes the array, and the model goes on from there with the grammar resumed at
        that point, so the reply still matches its schema. Text goes out only once no such cut
        can reach it. Where the grammar cannot close the array there (a `minItems` not reached),
        the reply goes on with the repeat, as the model wrote it.
        """
        llm = handle.llm
        items = ArrayItems() if grammar is not None else None
        text, emitted, finish = "", 0, "stop"
        kept: list[int] = []  # the tokens of the text a round resumes from
        for cuts in range(MAX_ARRAY_CUTS + 1):
            if len(kept) >= request.max_tokens:
                finish = "length"
                break
            if cuts == MAX_ARRAY_CUTS:  # the last round runs unguarded, so that it ends the reply
                items = None
            chunks = self._completion(handle, prompt + kept, request, kept, stop, grammar, items)
            for piece, reason in chunks:
                if self.stopping():
                    return text, "cancelled"
                text += piece
                finish = reason or finish
                if items is not None:
                    items.feed(piece)
                    if items.repeat_at is not None and handle.engine is not None:
                        break  # the serial path's stopping criterion, here: read no further
                settled = len(text) if items is None else items.settled
                if settled > emitted:
                    emit(text[emitted:settled])
                    emitted = settled
            if items is None or items.repeat_at is None:
                break
            closed = text[: items.repeat_at] + "]"
            if fast_grammar.accepts(llm, grammar, kept := _tokens(llm, closed)):
                text, items = closed, ArrayItems()
                items.feed(closed)
            elif fast_grammar.accepts(llm, grammar, kept := _tokens(llm, text)):
                items = None  # the array may not end there: the reply goes on with the repeat
            else:  # as tokenized again, the grammar refuses the reply: it ends where it is
                finish = "length"
                break
        if len(text) > emitted:
            emit(text[emitted:])
        return text, finish

    def _completion(
        self,
        handle: Loaded,
        prompt: list[int],
        request: GenerationRequest,
        kept: list[int],
        stop: list[str],
        grammar: Any,
        items: ArrayItems | None,
    ) -> Iterator[tuple[str, str | None]]:
        """A round's (text, finish reason): the batch engine's, or (`parallel = 0`) llama-cpp-python's."""
        max_tokens, options = request.max_tokens - len(kept), sampler_options(request)  # top_p, penalties
        if handle.engine is not None:
            job = handle.engine.submit(
                prompt, max_tokens, request.temperature, sampler_seed(request.seed), grammar, kept,
                **options, split_at=resume_state.split_point(handle, request, prompt),
            )  # fmt: skip
            yield from completion(job, stop, self.stopping)
            return
        for chunk in handle.llm.create_completion(
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=request.temperature,
            **options,
            seed=sampler_seed(request.seed),
            stop=stop,
            grammar=fast_grammar.resumed(grammar, kept) if kept else grammar,
            stopping_criteria=None if items is None else _until_repeat(items),
            stream=True,
        ):
            choice = chunk["choices"][0]
            yield choice["text"], choice.get("finish_reason")


WARM_PREFIXES = 4  # system blocks kept evaluated (each a KV snapshot of a few hundred tokens)
MAX_ARRAY_CUTS = 16  # repeated array items cut from one reply (each cut closes an array)


def _tokens(llm: Any, text: str) -> list[int]:
    """A reply's text as tokens, to resume from (not necessarily the tokens it was made of)."""
    return list(llm.tokenize(text.encode(), add_bos=False, special=False))


def _until_repeat(items: ArrayItems) -> Any:
    """llama-cpp-python's stopping rule that ends a round once `items` has found a repeat."""
    from llama_cpp import StoppingCriteriaList

    return StoppingCriteriaList([lambda _ids, _logits: items.repeat_at is not None])


def _warm_prefix(handle: Loaded, prefix: list[int]) -> None:
    """Make the model's context start with `prefix` evaluated: as it is (llama-cpp-python then
    evaluates only what follows), from a saved state, or evaluated once and saved."""
    llm = handle.llm
    if len(prefix) < 16 or llm._input_ids[: len(prefix)].tolist() == prefix:
        return
    key = tuple(prefix)
    state = handle.warm.get(key)
    if state is not None:
        llm.load_state(state)
        return
    llm.reset()
    llm.eval(prefix)
    handle.warm[key] = llm.save_state()
    while len(handle.warm) > WARM_PREFIXES:
        del handle.warm[next(iter(handle.warm))]


def _strings(stop: str | list[str] | None) -> list[str]:
    """A chat format's stop strings (llama-cpp-python gives one, a list, or none) as a list."""
    return [stop] if isinstance(stop, str) else list(stop or [])
