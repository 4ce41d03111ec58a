"""Seat routes: a turn run by a provider's own CLI on this host, under a person's subscription.

`codex-seat` launches the OpenAI Codex CLI (`codex exec --json`) and `claude-seat` launches
Claude Code (`claude -p --output-format json`); both bill the signed-in seat (auth lane `seat`,
cost lane `provider_subscription`). Waystation asks each CLI whether it is signed in and never
looks at how: it does not open, copy, store or log the CLIs' credential files (~/.codex/auth.json,
~/.claude/.credentials.json, ...), and it keeps nothing the CLIs print but the fields it parses
(see seats_cli). `codex login status` is read by its exit code only (its text quotes part of the
key); `claude auth status --json` by its `loggedIn` field only.

A seat CLI is an agent in its own right and runs its own tools, in its own sandbox, in a fresh
empty directory. Waystation's tools are not offered through a seat: a request's `tools` are not
passed on, and a seat's Generation never has tool calls. The conversation is flattened into one
prompt; `max_tokens` and `temperature` have no CLI flag and are not passed on either. Stop strings
have none either: the answer is cut at the first one here.

`claude-seat` runs only where policy enables it (`[routes.claude-seat] enabled = true`): a
subscription seat driven unattended is the user's choice to make, never a default.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import structlog

from waystation import contract
from waystation.adapters.models.base import Generation, GenerationRequest, TokenSink
from waystation.adapters.models.stop import cut_at_stop
from waystation.adapters.routes.seats_cli import (
    PROMPT_LIMIT,
    Answer,
    CodexEvents,
    claude_answer,
    claude_logged_in,
    describe_exit,
    flatten_messages,
    probe,
    run_lines,
)
from waystation.contract import AuthLane, CostLane
from waystation.errors import EmptyPrompt, InputError, ProviderError, RouteRefused, SeatRunFailed, TurnTimeout
from waystation.receipts.chain import RouteInfo, route_object

PROBE_TIMEOUT_S = 10.0
CACHE_S = 30.0
RUN_TIMEOUT_S = 600.0
TRANSIENT_STATUSES = frozenset({408, 425, 429})


def _log() -> Any:
    # Looked up per use, so a logging setup made (or captured) after import is the one used.
    return structlog.get_logger(__name__)


class SeatRoute:
    """What both seats share: detection (bounded, cached), the contract's route object, and
    their backend. A subclass says how to ask its CLI and how to read its answer."""

    name: str
    provider: str
    cli: ClassVar[str]
    install_hint: ClassVar[str]
    run_command: ClassVar[str]  # as shown in errors and logs
    auth_lane: ClassVar[AuthLane] = "seat"
    cost_lane: ClassVar[CostLane] = "provider_subscription"

    def __init__(
        self,
        *,
        model: str | None = None,
        env: Mapping[str, str] | None = None,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        cache_s: float = CACHE_S,
        run_timeout_s: float = RUN_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model or None
        self.env = env  # None: this process's environment, as it is when the CLI starts
        self.probe_timeout_s = probe_timeout_s
        self.cache_s = cache_s
        self.run_timeout_s = run_timeout_s
        self._clock = clock
        self._cached: tuple[float, tuple[bool, str | None]] | None = None
        self._last: tuple[bool, str | None] | None = None
        self._lock = asyncio.Lock()
        self._backends: dict[str | None, SeatBackend] = {}

    # -- detection ----------------------------------------------------------------------------

    async def availability(self) -> tuple[bool, str | None]:
        """(True, None) when the CLI is here and signed in, else (False, a human reason).
        Asked at most once per `cache_s`, each asking bounded by `probe_timeout_s`."""
        if (fresh := self._fresh()) is not None:
            return fresh
        async with self._lock:  # concurrent callers share one asking
            if (fresh := self._fresh()) is not None:
                return fresh
            result = await self._detect()
            changed = self._last != result
            self._cached, self._last = (self._clock(), result), result
        # Said once per change: `waystation status` asks every few seconds.
        log = _log().info if changed else _log().debug
        log("seat.detected", route=self.name, available=result[0], reason=result[1])
        return result

    def forget(self) -> None:
        """Drop the cached answer: the next availability() asks the CLI again."""
        self._cached = None

    def _fresh(self) -> tuple[bool, str | None] | None:
        if self._cached is not None and self._clock() - self._cached[0] < self.cache_s:
            return self._cached[1]
        return None

    def executable(self) -> str | None:
        path = None if self.env is None else self.env.get("PATH", os.defpath)
        return shutil.which(self.cli, path=path)

    def not_found(self) -> str:
        return f"{self.cli} CLI not found on PATH ({self.install_hint})"

    def policy_refusal(self) -> str | None:
        return None

    async def _detect(self) -> tuple[bool, str | None]:
        if (refusal := self.policy_refusal()) is not None:
            return False, refusal
        executable = self.executable()
        if executable is None:
            return False, self.not_found()
        try:
            return await self.signed_in(executable)
        except TimeoutError:
            return False, f"{self.status_command()} did not answer within {self.probe_timeout_s:g} s"
        except FileNotFoundError:
            return False, self.not_found()
        except OSError as exc:
            return False, f"{self.cli} CLI could not be started ({exc.strerror or type(exc).__name__})"

    def status_command(self) -> str:
        raise NotImplementedError

    async def signed_in(self, executable: str) -> tuple[bool, str | None]:
        raise NotImplementedError

    # -- the route ----------------------------------------------------------------------------

    def needs_internet(self) -> bool:
        return True  # the CLI runs here, the model at the provider

    def info(self, model: str | None = None) -> RouteInfo:
        return RouteInfo(self.name, self.provider, self.auth_lane, self.cost_lane, model or self.model)

    def refused(self, reason: str) -> RouteRefused:
        return RouteRefused(
            self.name, reason, provider=self.provider, auth_lane=self.auth_lane, cost_lane=self.cost_lane
        )

    async def status(self) -> contract.Route:
        """The contract's route object (`GET /v1/routes`)."""
        return route_object(self.info(), *await self.availability())

    def backend(self, model: str | None = None) -> tuple[RouteInfo, SeatBackend]:
        """The route and its ModelBackend for a turn; `model` overrides the configured one.
        Availability is checked when the backend generates (RouteRefused from generate)."""
        chosen = model or self.model
        if chosen not in self._backends:
            self._backends[chosen] = SeatBackend(self, chosen)
        return self.info(chosen), self._backends[chosen]

    async def close(self) -> None:
        self._backends.clear()

    # -- one turn -----------------------------------------------------------------------------

    def command(self, executable: str, prompt: str, model: str | None) -> list[str]:
        raise NotImplementedError

    async def answer(self, argv: list[str]) -> tuple[int, bool, Answer | None]:
        """Run the turn's command: (exit code, output overflowed, the parsed answer)."""
        raise NotImplementedError

    def check(self, returncode: int, overflowed: bool, answer: Answer | None) -> Answer:
        if overflowed:
            raise SeatRunFailed(self.name, self.run_command, "answered more than 16 MiB", returncode)
        status = answer.http_status if answer is not None else None
        if status in (401, 403):
            self.forget()
            raise self.refused(
                f"the provider refused the {self.cli} CLI's sign-in (HTTP {status}); "
                f"sign in again with `{self.cli}`"
            )
        if status is not None and (status in TRANSIENT_STATUSES or status >= 500):
            raise ProviderError(self.name, status)
        if returncode != 0:
            raise SeatRunFailed(self.name, self.run_command, describe_exit(returncode), returncode)
        if answer is None:
            raise SeatRunFailed(self.name, self.run_command, "answered without the JSON it was asked for", 0)
        if answer.failed:
            raise SeatRunFailed(self.name, self.run_command, "reported that the turn failed (exit 0)", 0)
        return answer


class CodexSeat(SeatRoute):
    """`codex-seat`: the OpenAI Codex CLI under a ChatGPT sign-in (or the key it was given)."""

    name = "codex-seat"
    provider = "openai"
    cli = "codex"
    install_hint = "npm install -g @openai/codex"
    run_command = "codex exec"
    # Codex's own tools may read the (empty, temporary) working directory but not write.
    sandbox = "read-only"

    def status_command(self) -> str:
        return "codex login status"

    async def signed_in(self, executable: str) -> tuple[bool, str | None]:
        # The exit code only: the text it prints names the sign-in and quotes part of a key.
        returncode, _ = await probe(
            [executable, "login", "status"], self.env, self.probe_timeout_s, read_stdout=False
        )
        if returncode == 0:
            return True, None
        return False, f"codex CLI not signed in (codex login status {describe_exit(returncode)})"

    def command(self, executable: str, prompt: str, model: str | None) -> list[str]:
        return [
            executable,
            "exec",
            "--json",
            "--skip-git-repo-check",  # its working directory is a fresh temporary one
            "--ephemeral",  # one turn: nothing to resume, nothing to keep on disk
            "--sandbox",
            self.sandbox,
            "--color",
            "never",
            *(["--model", model] if model else []),
            "--",
            prompt,
        ]

    async def answer(self, argv: list[str]) -> tuple[int, bool, Answer | None]:
        events = CodexEvents()
        returncode, overflowed = await run_lines(argv, self.env, events.feed)
        return returncode, overflowed, events.answer()


class ClaudeSeat(SeatRoute):
    """`claude-seat`: Claude Code under a Claude subscription; off unless policy enables it."""

    name = "claude-seat"
    provider = "anthropic"
    cli = "claude"
    install_hint = "npm install -g @anthropic-ai/claude-code"
    run_command = "claude -p"

    # Credentials the CLI would otherwise prefer over its own sign-in: with ANTHROPIC_API_KEY
    # set, a "seat" turn would be billed to the key while its receipt says seat, and a bare
    # subscription token never runs an unattended turn. The seat is the CLI's own login.
    NOT_THE_SEAT = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")

    def __init__(self, *, enabled: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.enabled = enabled
        base = os.environ if self.env is None else self.env
        self.env = {k: v for k, v in base.items() if k not in self.NOT_THE_SEAT}

    def policy_refusal(self) -> str | None:
        if self.enabled:
            return None
        return "claude-seat is disabled by policy ([routes.claude-seat] enabled = false)"

    def status_command(self) -> str:
        return "claude auth status"

    async def signed_in(self, executable: str) -> tuple[bool, str | None]:
        returncode, output = await probe(
            [executable, "auth", "status", "--json"], self.env, self.probe_timeout_s, read_stdout=True
        )
        logged_in = claude_logged_in(output)
        del output  # the rest of the status (account, organisation) is not ours to keep
        if logged_in:
            return True, None
        if logged_in is False:
            return False, "claude CLI not signed in (claude auth status: loggedIn false)"
        return False, (
            f"claude CLI sign-in unknown (claude auth status {describe_exit(returncode)} "
            "without a loggedIn field)"
        )

    def command(self, executable: str, prompt: str, model: str | None) -> list[str]:
        return [
            executable,
            "-p",
            "--output-format",
            "json",
            "--no-session-persistence",  # one turn: nothing to resume, nothing to keep on disk
            *(["--model", model] if model else []),
            "--",
            prompt,
        ]

    async def answer(self, argv: list[str]) -> tuple[int, bool, Answer | None]:
        chunks: list[bytes] = []
        returncode, overflowed = await run_lines(argv, self.env, chunks.append)
        return returncode, overflowed, claude_answer(b"".join(chunks))


class SeatBackend:
    """A seat route as a ModelBackend: each generate() launches the CLI for one answer."""

    def __init__(self, route: SeatRoute, model: str | None) -> None:
        self.route = route
        self.name = route.name
        self.model_path = model or ""
        self.model = model

    @property
    def loaded(self) -> bool:
        return False  # nothing stays in memory between turns: each turn is a new process

    async def generate(self, request: GenerationRequest, on_token: TokenSink | None = None) -> Generation:
        route = self.route
        prompt = flatten_messages(request.messages)
        if not prompt:
            raise EmptyPrompt()
        if len(prompt.encode()) > PROMPT_LIMIT:
            raise InputError(
                f"the prompt is {len(prompt.encode())} bytes; {route.name} takes at most "
                f"{PROMPT_LIMIT} bytes (one command-line argument)"
            )
        available, reason = await route.availability()
        if not available:
            raise route.refused(reason or "not available")
        executable = route.executable()
        if executable is None:  # gone since it was last asked
            route.forget()
            raise route.refused(route.not_found())
        started = time.perf_counter()
        try:
            async with asyncio.timeout(route.run_timeout_s):
                returncode, overflowed, answer = await route.answer(
                    route.command(executable, prompt, self.model)
                )
        except TimeoutError:
            _log().warning("seat.killed", route=route.name, why="timeout", limit_s=route.run_timeout_s)
            raise TurnTimeout(route.run_timeout_s) from None
        except asyncio.CancelledError:
            _log().info("seat.killed", route=route.name, why="cancelled")
            raise
        except OSError as exc:
            route.forget()
            raise route.refused(
                f"{route.cli} CLI could not be started ({exc.strerror or type(exc).__name__})"
            ) from None
        duration_ms = int((time.perf_counter() - started) * 1000)
        _log().info("seat.exited", route=route.name, returncode=returncode, duration_ms=duration_ms)
        answer = route.check(returncode, overflowed, answer)
        text, _ = cut_at_stop(answer.text, request.stop)  # the CLIs take no stop strings
        if on_token is not None and text:
            on_token(text)  # the CLIs' JSON modes give the answer whole, not token by token
        return Generation(
            text=text,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            first_token_ms=duration_ms if answer.text else None,
            model_answered=answer.model_answered,
            telemetry=dict(answer.telemetry),
        )

    async def unload(self) -> None:
        return None

    async def close(self) -> None:
        return None  # a running CLI is killed by cancelling its turn
