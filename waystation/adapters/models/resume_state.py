"""What a parked turn keeps of the model's state, so that its resumption does not read it again.

A turn parks after a step that called a tool; it resumes with an answer step asked in another
form (grounding.py: the results pasted into the last user message, and no tool instructions in
the system message), so the parked step's own KV cache is not a prefix of the resumed prompt.
What the two share is the template's rendering of the conversation before the last user message
(the system prompt, the earlier exchanges) up to where that message's content starts. That is
what is kept: rendered from the answer form with a sentinel as the last user's content and cut
there, evaluated in a free sequence slot (batching.py `save`, reusing a slot's prefix), and its
state written to disk (saved_state.py). Any later generation whose prompt starts with it, the
resumption after a restart too, restores it (batching.py `submit`).
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from waystation.adapters.models import prompt_size
from waystation.adapters.models.base import GenerationRequest, Message
from waystation.adapters.models.batch_job import Finished
from waystation.adapters.models.batching import BatchEngine
from waystation.adapters.models.chat_messages import answer_form
from waystation.adapters.models.saved_state import MIN_TOKENS, SavedStates, fingerprint

if TYPE_CHECKING:
    from waystation.adapters.models.llamacpp import Loaded

log = structlog.get_logger(__name__)

# The last user message's content while the prefix is rendered: text no template changes (no
# whitespace to trim, no markup) and no conversation holds.
SENTINEL = "WAYSTATION7RESUMED7QUESTION"
SAVE_TIMEOUT_S = 600.0  # a save evaluates at most one context; past this something is wrong


def open_states(engine: BatchEngine, model: Path, root: Path, limit_mb: int) -> SavedStates:
    """The saved prefixes of `model` as this engine's settings made them (MB: 10^6 bytes)."""
    return SavedStates(root, limit_mb * 1_000_000, model, fingerprint(model), engine.state_settings)


def answer_prefix(handle: Loaded, request: GenerationRequest) -> list[int]:
    """The tokens an answer to `request`'s last user message starts with, whatever that message
    and the results after it say: [] where there is no user message or the template hides it."""
    messages = list(request.messages)
    at = _last_user(messages)
    if at < 0:
        return []
    asked = answer_form([*messages[:at], {"role": "user", "content": SENTINEL}], request.response_format)
    rendered = handle.formatter(messages=asked).prompt
    cut = rendered.find(SENTINEL)
    if cut < 0:
        return []
    return prompt_size.tokenized(handle.llm, rendered[:cut], handle.boundary)


def split_point(handle: Loaded, request: GenerationRequest, prompt: Sequence[int]) -> int:
    """Where the engine stops a batch while it evaluates `prompt`, the answer after tool results:
    at the end of the answer prefix a parked turn keeps, when the prompt starts with one long
    enough to keep (else 0: nowhere).

    llama.cpp's sums depend on how a prompt is cut into batches, and a resumption evaluates what
    follows a restored prefix in batches of its own. Evaluated cold, it is cut there too, so its
    cache holds the numbers a restored state gives: the resumed reply is the cold one, token for
    token, whether its state was kept, lost or never saved (`saved_state_mb = 0`). Other prompts
    are not cut: evaluated whole, as llama-server evaluates them, they get its replies."""
    messages = list(request.messages)
    if not any(m.get("role") == "tool" for m in messages[_last_user(messages) + 1 :]):
        return 0
    prefix = answer_prefix(handle, request)
    return len(prefix) if len(prefix) >= MIN_TOKENS and list(prompt[: len(prefix)]) == prefix else 0


def _last_user(messages: Sequence[Message]) -> int:
    """The index of the last user message (-1: none)."""
    return max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)


def keep(handle: Loaded, request: GenerationRequest) -> bool:
    """Save the state after `request`'s answer prefix (blocking: on a worker thread); whether a
    state was written. Short prefixes, and ones saved already, are not."""
    engine = handle.engine
    states = engine.states if engine is not None else None
    if engine is None or states is None:
        return False
    tokens = answer_prefix(handle, request)
    if len(tokens) < MIN_TOKENS or states.has(tokens):
        return False
    started = time.perf_counter()
    job = engine.save(tokens)
    deadline = time.monotonic() + SAVE_TIMEOUT_S
    while True:
        try:
            item = job.out.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            job.cancel()
            return False
        if isinstance(item, Finished):
            break
    if item.reason != "stop" or item.error is not None or job.state is None:
        return False  # the model was closing, or the step failed (logged by the engine)
    written = states.write(tokens, job.state)
    log.info(
        "model state kept for the resumption",
        tokens=len(tokens),
        reused=job.reused,
        bytes=len(job.state),
        ms=int((time.perf_counter() - started) * 1000),
        written=written,
    )
    return written


def failed(saving: asyncio.Future[bool]) -> None:
    """A save that failed is logged; the resumption then evaluates its prompt whole."""
    if not saving.cancelled() and saving.exception() is not None:
        log.warning("model state not kept", error=repr(saving.exception()))


def usage(engine: BatchEngine | None) -> dict[str, Any] | None:
    """`models ps`'s saved state of one model: its entries and bytes, the directory's limit;
    None where none is kept (`saved_state_mb = 0`, `parallel = 0`)."""
    states = engine.states if engine is not None else None
    if states is None:
        return None
    entries, size = states.usage()
    return {"entries": entries, "bytes": size, "limit_bytes": states.limit_bytes}


def counts(engine: BatchEngine | None) -> tuple[int, int]:
    """Prefixes saved to disk and restored from it since the engine started."""
    if engine is None or engine.states is None:
        return 0, 0
    return engine.states.saved, engine.restored
