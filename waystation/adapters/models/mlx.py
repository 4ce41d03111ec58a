"""The MLX backend: an mlx-lm model directory, generated on the owner thread or batched.

MLX is imported only when a model loads, so Waystation runs where mlx is not installed. A GGUF
file is not an MLX model: `python -m waystation.adapters.models.gguf_to_mlx` converts one.
Tool calls follow the model's own tool template when its chat template takes `tools`; otherwise
the tools are described in a system message (`base.tool_instructions`) and the reply is read as
the JSON that message asks for (a reply read whole, then parsed: batched like any other).
With `[model] parallel` > 0 every generation goes through the batch engine (mlx_batching.py);
with 0, or where mlx-lm cannot batch the model, through `stream_generate`, one at a time.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waystation.adapters.models import grounding
from waystation.adapters.models.base import (
    Generation,
    GenerationRequest,
    Message,
    TokenSink,
    ToolCall,
    ToolSpec,
    parse_tool_reply,
    tool_instructions,
)
from waystation.adapters.models.batch_job import completion
from waystation.adapters.models.mlx_batching import (
    MlxBatchEngine,
    batch_generator_class,
    batchable,
    sampling,
    seed_random,
)
from waystation.adapters.models.stop import StopStream, cut_at_stop
from waystation.adapters.models.threaded import ThreadedBackend
from waystation.errors import ModelError, PromptTooLong, UnsupportedParameter

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def is_mlx_model_dir(path: str | Path) -> bool:
    """True for a directory mlx-lm can load: a config.json next to model*.safetensors."""
    directory = Path(path).expanduser()
    return (
        directory.is_dir()
        and (directory / "config.json").is_file()
        and any(directory.glob("model*.safetensors"))
    )


@dataclass
class MlxModel:
    model: Any  # mlx.nn.Module
    tokenizer: Any  # mlx_lm.tokenizer_utils.TokenizerWrapper
    context: int | None  # max position embeddings, when the config names them
    tool_template: bool  # the chat template renders a `tools` argument
    engine: MlxBatchEngine | None = None  # `[model] parallel` > 0: every sequence goes through it


class MlxBackend(ThreadedBackend[MlxModel]):
    name = "mlx"

    def __init__(self, model_path: str, **options: Any) -> None:
        """ThreadedBackend's options; `parallel` > 0 asks for the batch engine."""
        super().__init__(model_path, **options)
        self._asked_parallel = self.parallel  # `parallel` itself reads 0 where batching cannot be
        # Without a batch engine (parallel 0, or no BatchGenerator for this model) several
        # generations may still be let in at once: they take the model one at a time.
        self._one_at_a_time = threading.Lock()

    def load_blocking(self) -> MlxModel:
        path = Path(self.model_path).expanduser()
        if not path.exists():
            raise ModelError(path, "no such MLX model directory")
        if path.is_file():
            hint = (
                "it is a GGUF file: use the llamacpp backend, or convert it with "
                f"`python -m waystation.adapters.models.gguf_to_mlx {path} OUT_DIR`"
                if path.suffix.lower() == ".gguf"
                else "the MLX backend needs a model directory"
            )
            raise ModelError(path, f"not a directory; {hint}")
        if not is_mlx_model_dir(path):
            raise ModelError(path, "not an MLX model directory (it needs config.json and model*.safetensors)")
        try:
            import mlx_lm  # type: ignore[import-untyped, import-not-found, unused-ignore]
        except ImportError as exc:
            raise ModelError(
                path, 'the MLX backend needs mlx-lm: pip install mlx-lm (on Linux also "mlx[cpu]")'
            ) from exc
        try:
            # an existing local directory: mlx_lm.load never reaches for the hub
            loaded: Any = mlx_lm.load(str(path), return_config=True)
            model, tokenizer, config = loaded
        except Exception as exc:  # whatever stops mlx-lm building it, the directory is unusable
            raise ModelError(path, f"mlx-lm cannot load it ({type(exc).__name__}: {exc})") from exc
        if not tokenizer.has_chat_template:
            raise ModelError(path, "the tokenizer has no chat template (an instruct model is needed)")
        context = config.get("max_position_embeddings") or config.get("max_sequence_length")
        engine = None
        if self._asked_parallel > 0 and batch_generator_class() is not None and batchable(model):
            engine = MlxBatchEngine(model, tokenizer, self._asked_parallel)
        self.parallel = self._asked_parallel if engine is not None else 0  # `models ps`: serial
        return MlxModel(
            model, tokenizer, int(context) if context else None, _renders_tools(tokenizer), engine
        )

    def unload_blocking(self, handle: MlxModel) -> None:
        if handle.engine is not None:
            handle.engine.close()
        del handle
        gc.collect()
        import mlx.core as mx  # type: ignore[import-untyped, import-not-found, unused-ignore]

        mx.clear_cache()

    def generate_blocking(self, handle: MlxModel, request: GenerationRequest, emit: TokenSink) -> Generation:
        if request.response_format is not None:  # no grammar here: never pretend to constrain
            raise UnsupportedParameter("response_format", "the mlx backend cannot constrain its answer")
        started = time.perf_counter()
        tools = list(request.tools) if request.tool_choice != "none" else []
        prompt = self.prompt_tokens(handle, request.messages, tools, request)
        room = (
            request.max_tokens
            if handle.context is None
            else min(request.max_tokens, handle.context - len(prompt))
        )
        if room < 1:
            return Generation("", prompt_tokens=len(prompt), finish_reason="length")

        # A reply that may be a tool call is read whole, then its answer is held to the stop
        # strings and given out (a call's JSON is neither streamed as text nor cut); a plain
        # answer streams, ending before the first stop string (no grammar here to end it).
        stop = () if tools else request.stop
        chunks = (
            self._batched(handle.engine, prompt, room, request, stop)
            if handle.engine is not None
            else self._serial(handle, prompt, room, request, stop)
        )
        first_token_ms: int | None = None
        finish_reason, completion_tokens, pieces = "stop", 0, []
        for piece, reason, generated in chunks:
            completion_tokens = generated
            if first_token_ms is None:
                first_token_ms = int((time.perf_counter() - started) * 1000)
            pieces.append(piece)
            if piece and not tools:
                emit(piece)
            finish_reason = reason or finish_reason
        text = "".join(pieces)
        tool_calls: list[ToolCall] = []
        if tools:
            text, tool_calls = parse_tool_calls(text)
            if tool_calls:
                finish_reason = "tool_calls"
            else:
                text, stopped = cut_at_stop(text, request.stop)
                finish_reason = "stop" if stopped else finish_reason
                if text:
                    emit(text)
        return Generation(
            text=text,
            tool_calls=tool_calls,
            prompt_tokens=len(prompt),
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
            first_token_ms=first_token_ms,
        )

    def _batched(
        self,
        engine: MlxBatchEngine,
        prompt: list[int],
        room: int,
        request: GenerationRequest,
        stop: Sequence[str],
    ) -> Iterator[tuple[str, str | None, int]]:
        """(text, finish reason, tokens so far) from the batch engine (mlx_batching.py)."""
        job = engine.submit(prompt, room, request)
        for piece, reason in completion(job, stop, self.stopping):
            yield piece, reason, job.generated

    def _serial(
        self, handle: MlxModel, prompt: list[int], room: int, request: GenerationRequest, stop: Sequence[str]
    ) -> Iterator[tuple[str, str | None, int]]:
        """(text, finish reason, tokens so far) from mlx-lm's one-sequence `stream_generate`."""
        import mlx_lm  # type: ignore[import-untyped, import-not-found, unused-ignore]

        sampler, penalties = sampling(request)
        pieces: list[str] = []
        stream = StopStream(stop, pieces.append)
        with self._one_at_a_time:
            if request.seed is not None:  # one generation at a time here: the global state is its own
                seed_random(request.seed)
            for response in mlx_lm.stream_generate(
                handle.model,
                handle.tokenizer,
                prompt,
                max_tokens=room,
                sampler=sampler,
                logits_processors=penalties,
            ):
                reason, generated = None, response.generation_tokens
                if self.stopping():
                    reason = "cancelled"
                else:
                    stream.feed(response.text)
                    if stream.stopped:
                        reason = "stop"
                    elif response.finish_reason is not None:
                        reason = response.finish_reason
                        generated -= reason == "stop"  # the stop token ends the reply, not part of it
                if reason is not None:
                    stream.finish()
                yield "".join(pieces), reason, generated
                pieces.clear()
                if reason is not None:
                    return

    def prompt_tokens(
        self,
        handle: MlxModel,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        request: GenerationRequest,
    ) -> list[int]:
        """The chat-templated prompt as token ids; PromptTooLong when it fills the context."""
        import jinja2

        budget = grounding.budget_for(handle.context, request.max_tokens)
        # Tool results in the form the model answers from (grounding.py), as llama.cpp gets them.
        messages = grounding.trimmed(messages, budget) if tools else grounding.grounded(messages, budget)
        try:
            if tools and handle.tool_template:
                ids = handle.tokenizer.apply_chat_template(
                    list(messages), tools=[_tool_json(t) for t in tools], add_generation_prompt=True
                )
            else:
                if tools:
                    messages = _with_system(messages, tool_instructions(tools, request.tool_choice))
                ids = handle.tokenizer.apply_chat_template(_plain(messages), add_generation_prompt=True)
        except jinja2.TemplateError as exc:
            raise ModelError(self.model_path, f"the chat template rejected the messages: {exc}") from exc
        ids = [int(i) for i in ids]
        if handle.context is not None and len(ids) >= handle.context:
            raise PromptTooLong(len(ids), handle.context)
        return ids


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """(answer text, tool calls) from a reply: `<tool_call>{...}</tool_call>` blocks (the
    Hermes/Qwen form, `{"name", "arguments"}`), else the JSON that `tool_instructions` asks for."""
    blocks = _TOOL_CALL.findall(text)
    if blocks:
        calls = [call for block in blocks if (call := _tool_call_json(block)) is not None]
        if calls:
            return _TOOL_CALL.sub("", text).strip(), calls
    stripped = text.strip()
    if fenced := _FENCE.fullmatch(stripped):
        stripped = fenced.group(1)
    answer, calls = parse_tool_reply(stripped, _call_id())
    if calls or answer != stripped:
        return answer, calls
    return text, []


def _tool_call_json(block: str) -> ToolCall | None:
    try:
        value = json.loads(block)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    name = value.get("name", value.get("tool"))
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or not isinstance(arguments, dict):
        return None
    return ToolCall(_call_id(), name, arguments)


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _tool_json(tool: ToolSpec) -> dict[str, Any]:
    """The OpenAI function shape that tool-aware chat templates read."""
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": dict(tool.parameters),
        },
    }


def _renders_tools(tokenizer: Any) -> bool:
    """Whether the Jinja chat template reads a `tools` variable (a tool template)."""
    import jinja2
    import jinja2.meta

    template = tokenizer.chat_template
    if isinstance(template, dict):  # named templates: the one transformers uses by default
        template = template.get("tool_use") or template.get("default")
    if not isinstance(template, str):
        return False
    try:
        return "tools" in jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(template))
    except jinja2.TemplateError:
        return "tools" in template


def _with_system(messages: Sequence[Message], text: str) -> list[Message]:
    """The tool instructions as the system message, joined to one the caller already sent."""
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        content = _content(first)
        return [{**first, "content": f"{content}\n\n{text}" if content else text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _plain(messages: Sequence[Message]) -> list[Message]:
    """Messages a template without tool support can render: string content everywhere, and an
    assistant's earlier tool calls written in the JSON form the tool instructions ask for."""
    plain = []
    for message in messages:
        content = _content(message)
        calls = message.get("tool_calls") or []
        if not content and calls:
            content = "\n".join(json.dumps(_instruction_form(call)) for call in calls)
        plain.append({"role": message.get("role", "user"), "content": content})
    return plain


def _instruction_form(call: Any) -> dict[str, Any]:
    function = call.get("function", call) if isinstance(call, dict) else {}
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        with contextlib.suppress(json.JSONDecodeError):
            arguments = json.loads(arguments)
    return {"tool": function.get("name", ""), "arguments": arguments}


def _content(message: Message) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)
