"""Running a seat CLI (`codex`, `claude`) as a child process, and reading what it answers.

A seat CLI holds a person's subscription sign-in in its own files. Waystation treats everything
the CLI prints as possibly holding that credential (`codex login status` prints part of an API
key, for one): detection keeps an exit code or one JSON field, a turn keeps only the fields it
parses, and nothing the CLI prints is ever logged, raised or stored. stderr goes to /dev/null.

A child runs without a shell (an argument list), with the environment passed through unchanged,
stdin closed, a fresh temporary directory as its working directory, and in its own process group,
so that a timeout or a cancelled turn kills the CLI and everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

OUTPUT_LIMIT = 16 * 1024 * 1024  # a seat's answer larger than this is not an answer we can use
STATUS_LIMIT = 1024 * 1024
# Linux refuses a single argument over 128 KiB (MAX_ARG_STRLEN); the prompt is one argument.
PROMPT_LIMIT = 120 * 1024
EXIT_POLL_S = 0.1
REAP_TIMEOUT_S = 5.0

LineSink = Callable[[bytes], None]


@dataclass(frozen=True)
class Answer:
    """What a seat CLI's JSON said; None/0 where it did not say."""

    text: str = ""
    failed: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_answered: str | None = None
    http_status: int | None = None  # claude's `api_error_status`
    telemetry: dict[str, str] = field(default_factory=dict)


def describe_exit(returncode: int) -> str:
    return f"exited {returncode}" if returncode >= 0 else f"was ended by signal {-returncode}"


def _kill_group(process: asyncio.subprocess.Process) -> None:
    # The CLI's pid leads its own group (start_new_session): this reaches codex.js's native
    # binary and any tool the CLI started, not only the process we spawned.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def _spawn(
    argv: Sequence[str], env: Mapping[str, str] | None, cwd: str, *, stdout: bool = True
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if stdout else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        start_new_session=True,
        limit=OUTPUT_LIMIT,
    )


def _workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="waystation-seat-", ignore_cleanup_errors=True)


async def _reap(process: asyncio.subprocess.Process) -> None:
    _kill_group(process)
    # Bounded: a grandchild that left the group (setsid) and holds the pipe is not ours to wait on.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(process.wait()), REAP_TIMEOUT_S)


async def _pump(process: asyncio.subprocess.Process, on_line: LineSink, limit: int) -> bool:
    """Hand each stdout line to `on_line` until EOF; True (and the group killed) past `limit`."""
    assert process.stdout is not None
    total = 0
    while True:
        try:
            line = await process.stdout.readline()
        except ValueError:  # one line over the stream's limit
            line, total = b"", limit
        total += len(line)
        if total >= limit:
            _kill_group(process)
            return True
        if not line:
            return False
        on_line(line)


async def _communicate(
    process: asyncio.subprocess.Process, on_line: LineSink, limit: int
) -> tuple[int, bool]:
    """(exit code, overflowed) once the CLI has exited and its output is read.

    asyncio ends `wait()` and stdout only when every holder of the pipe has closed it, and a CLI
    can exit leaving a child that holds it (a tool, a helper server): so the CLI's own exit is
    watched apart (`returncode` is set as soon as it exits), and then the rest of its group is
    killed; what it wrote before exiting is still in the pipe to read."""
    pump = asyncio.ensure_future(_pump(process, on_line, limit))
    try:
        while not pump.done() and process.returncode is None:
            await asyncio.wait({pump}, timeout=EXIT_POLL_S)
        if not pump.done():
            _kill_group(process)
        overflowed = await pump
        returncode = await process.wait()
    finally:
        pump.cancel()
    return returncode, overflowed


async def probe(
    argv: Sequence[str], env: Mapping[str, str] | None, timeout_s: float, *, read_stdout: bool
) -> tuple[int, bytes]:
    """Run a status command: (exit code, its stdout when asked for, else b"" and never read).

    OSError when it cannot start (not found, not executable); TimeoutError past `timeout_s`,
    with the command and its group killed."""
    with _workdir() as cwd:
        process = await _spawn(argv, env, cwd, stdout=read_stdout)
        lines: list[bytes] = []
        try:
            async with asyncio.timeout(timeout_s):
                if read_stdout:
                    returncode, _ = await _communicate(process, lines.append, STATUS_LIMIT)
                else:
                    returncode = await process.wait()
        finally:
            await _reap(process)
    return returncode, b"".join(lines)


async def run_lines(
    argv: Sequence[str], env: Mapping[str, str] | None, on_line: LineSink
) -> tuple[int, bool]:
    """Run a turn's command, handing each stdout line to `on_line`: (exit code, overflowed).

    No timeout of its own: the caller bounds it with `asyncio.timeout`; a timeout or a
    cancellation kills the CLI's process group before the exception goes on."""
    with _workdir() as cwd:
        process = await _spawn(argv, env, cwd)
        try:
            return await _communicate(process, on_line, OUTPUT_LIMIT)
        finally:
            await _reap(process)


def json_object(raw: bytes) -> dict[str, Any] | None:
    """The JSON object in `raw` (a CLI may print a line or two before it), or None."""
    text = raw.decode("utf-8", "replace").strip()
    candidates = [text]
    start, end = text.find("{"), text.rfind("}")
    if 0 < start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class CodexEvents:
    """Reads `codex exec --json` JSON Lines: `item.completed` items of type `agent_message`
    (the last is the answer), `turn.completed` with `usage`, `turn.failed`."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.failed = False
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def feed(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        item = event.get("item")
        if kind == "item.completed" and isinstance(item, dict) and item.get("type") == "agent_message":
            text = item.get("text")
            if isinstance(text, str):
                self.messages.append(text)
        elif kind == "turn.completed" and isinstance(event.get("usage"), dict):
            usage = event["usage"]
            self.prompt_tokens += _count(usage.get("input_tokens"))  # cached ones are included
            self.completion_tokens += _count(usage.get("output_tokens"))
        elif kind == "turn.failed":
            self.failed = True

    def answer(self) -> Answer:
        return Answer(
            text=self.messages[-1] if self.messages else "",
            failed=self.failed,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )


def claude_answer(raw: bytes) -> Answer | None:
    """Reads `claude -p --output-format json`: one `result` object with `result`, `is_error`,
    `api_error_status`, `usage` (Anthropic's, cache reads and writes apart) and `modelUsage`
    (model name -> its tokens). None when the output is not that object."""
    result = json_object(raw)
    if result is None or not ("result" in result or "is_error" in result):
        return None
    usage = _object(result.get("usage"))
    prompt = sum(
        [
            _count(usage.get(key))
            for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        ]
    )
    models = _object(result.get("modelUsage"))
    answered = max(models, key=lambda name: _count(_object(models[name]).get("outputTokens")), default=None)
    status = result.get("api_error_status")
    turns = result.get("num_turns")
    text = result.get("result")
    return Answer(
        text=text if isinstance(text, str) else "",
        failed=result.get("is_error") is True or result.get("subtype") not in (None, "success"),
        prompt_tokens=prompt,
        completion_tokens=_count(usage.get("output_tokens")),
        model_answered=answered if isinstance(answered, str) else None,
        http_status=status if isinstance(status, int) and not isinstance(status, bool) else None,
        telemetry={"num_turns": str(turns)} if _count(turns) else {},
    )


def claude_logged_in(raw: bytes) -> bool | None:
    """`claude auth status --json` -> its `loggedIn` field; every other field is left unread."""
    status = json_object(raw)
    value = status.get("loggedIn") if status is not None else None
    return value if isinstance(value, bool) else None


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, dict):
                parts.append(f"[{part.get('type', 'content')} omitted]")
        return "".join(parts)
    return json.dumps(content)


def flatten_messages(messages: Sequence[Mapping[str, Any]]) -> str:
    """OpenAI-style messages as one prompt for a CLI that takes one. A lone user message is
    passed as it is; a conversation becomes labelled sections, in order."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return _text(messages[0].get("content")).strip()
    sections = []
    for message in messages:
        role = str(message.get("role") or "user")
        text = _text(message.get("content")).strip()
        for call in message.get("tool_calls") or ():
            function = call.get("function", {}) if isinstance(call, dict) else {}
            text += f"\n[called tool {function.get('name')} with {function.get('arguments')}]"
        if role == "tool":
            role = f"tool result ({message.get('name') or message.get('tool_call_id') or 'tool'})"
        if text.strip():
            sections.append(f"## {role[:1].upper()}{role[1:]}\n{text.strip()}")
    return "\n\n".join(sections)
