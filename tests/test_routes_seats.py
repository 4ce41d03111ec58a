"""Seat routes (`codex-seat`, `claude-seat`): detection from the real CLIs' own answers, turns
through tiny fake CLIs, and no seat credential anywhere Waystation writes.

The real `@openai/codex` and `@anthropic-ai/claude-code` come from the npm registry (tests/npm_clis.py)
and run with HOME set to an empty temporary directory, so neither is signed in. Fake CLIs
(tests/fake_bin) stand in where a signed-in CLI must answer a turn.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

sys.path.insert(0, str(Path(__file__).parent))

from support.npm_clis import (
    CliUnavailable,
    NpmClis,
    alive,
    exists,
    fake_cli_dir,
    installed_clis,
    processes_with,
    wait_for,
)

from waystation.adapters.models.base import GenerationRequest
from waystation.adapters.routes.seats import ClaudeSeat, CodexSeat, SeatRoute
from waystation.adapters.routes.seats_cli import flatten_messages
from waystation.errors import (
    EmptyPrompt,
    InputError,
    ProviderError,
    RouteRefused,
    SeatRunFailed,
    TurnTimeout,
    WaystationError,
)

SECRET = "sk-SEATSECRET123"
# Whole or in part: the real codex quotes a key as "sk-SEATS***ET123".
SECRET_PARTS = ("SEATSECRET", "sk-SEATS", "ET123")
CODEX_NOT_SIGNED_IN = "codex CLI not signed in (codex login status exited 1)"
CLAUDE_NOT_SIGNED_IN = "claude CLI not signed in (claude auth status: loggedIn false)"
CLAUDE_DISABLED = "claude-seat is disabled by policy ([routes.claude-seat] enabled = false)"

HAS_PROC = Path("/proc/self/environ").exists()

# Every file this process opens and every command it starts while `_audit` records: the proof
# that Waystation itself never opens a seat's credential file or passes its contents on.
_audit: list[tuple[str, str]] | None = None


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _audit is not None and event in ("open", "subprocess.Popen"):
        _audit.append((event, repr(args)))


sys.addaudithook(_hook)


@pytest.fixture
def audit() -> Iterator[list[tuple[str, str]]]:
    global _audit
    _audit = []
    try:
        yield _audit
    finally:
        _audit = None


def assert_no_credential_opened(audit: list[tuple[str, str]]) -> None:
    for event, args in audit:
        assert "auth.json" not in args and ".credentials.json" not in args, (event, args)
        assert not any(part in args for part in SECRET_PARTS), (event, args)


def assert_no_secret(*things: object) -> None:
    for thing in things:
        shown = thing if isinstance(thing, str) else repr(thing)
        for part in SECRET_PARTS:
            assert part not in shown, f"{part!r} leaked in {shown[:300]!r}"


@pytest.fixture(scope="session")
def npm_clis() -> NpmClis:
    try:
        return installed_clis()
    except CliUnavailable as exc:
        pytest.skip(f"real seat CLIs unavailable: {exc}")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def secret_home(home: Path) -> Path:
    """A HOME where both CLIs find a (fake) sign-in holding SECRET."""
    (home / ".codex").mkdir()
    (home / ".codex" / "auth.json").write_text(json.dumps({"OPENAI_API_KEY": SECRET}))
    (home / ".claude").mkdir()
    oauth = {"accessToken": "sk-ant-oat01-" + SECRET, "refreshToken": "sk-ant-ort01-" + SECRET}
    (home / ".claude" / ".credentials.json").write_text(
        json.dumps({"claudeAiOauth": {**oauth, "expiresAt": 9999999999999, "scopes": ["user:inference"]}})
    )
    return home


@pytest.fixture
def seat_dir(tmp_path: Path) -> Path:
    path = tmp_path / "seat"
    path.mkdir()
    return path


@pytest.fixture
def fake_env(tmp_path: Path, home: Path, seat_dir: Path) -> dict[str, str]:
    bin_dir = fake_cli_dir(tmp_path / "bin")
    return {
        "HOME": str(home),
        "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "FAKE_SEAT_DIR": str(seat_dir),
        "FAKE_SEAT_MODE": "ok",
        "FAKE_SEAT_MARK": "passed-through",
    }


def make_seat(kind: str, env: dict[str, str], **kwargs: Any) -> SeatRoute:
    if kind == "codex":
        return CodexSeat(env=env, **kwargs)
    return ClaudeSeat(enabled=True, env=env, **kwargs)


def ask(text: str = "ping", system: str | None = None) -> GenerationRequest:
    messages = [{"role": "system", "content": system}] if system else []
    return GenerationRequest([*messages, {"role": "user", "content": text}])


def args_of(seat_dir: Path) -> list[str]:
    return (seat_dir / "args").read_text().split("\0")[:-1]


# -- the real CLIs, not signed in ----------------------------------------------------------------


async def test_real_codex_answers_not_signed_in(npm_clis: NpmClis, home: Path) -> None:
    seat = CodexSeat(env=npm_clis.env(home))
    assert await seat.availability() == (False, CODEX_NOT_SIGNED_IN)
    status = await seat.status()
    assert status == {
        "name": "codex-seat",
        "provider": "openai",
        "auth_lane": "seat",
        "cost_lane": "provider_subscription",
        "model": None,
        "available": False,
        "reason": CODEX_NOT_SIGNED_IN,
    }


async def test_real_claude_answers_not_signed_in(npm_clis: NpmClis, home: Path) -> None:
    seat = ClaudeSeat(enabled=True, env=npm_clis.env(home))
    assert await seat.availability() == (False, CLAUDE_NOT_SIGNED_IN)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("codex", CODEX_NOT_SIGNED_IN), ("claude", CLAUDE_NOT_SIGNED_IN)],
    ids=["codex", "claude"],
)
async def test_real_cli_not_signed_in_refuses_the_turn(
    npm_clis: NpmClis, home: Path, kind: str, reason: str
) -> None:
    seat = make_seat(kind, npm_clis.env(home))
    _info, backend = seat.backend()
    with pytest.raises(RouteRefused) as refused:
        await backend.generate(ask())
    assert refused.value.reason == reason
    assert (refused.value.route, refused.value.auth_lane, refused.value.cost_lane) == (
        seat.name,
        "seat",
        "provider_subscription",
    )
    assert refused.value.exit_code == 4


async def test_real_clis_signed_in_never_leak_the_credential(
    npm_clis: NpmClis, secret_home: Path, audit: list[tuple[str, str]], capfd: pytest.CaptureFixture[str]
) -> None:
    """The real CLIs take the fake credential files as a sign-in (codex then prints part of the
    key): the routes say available, and nothing of the key is kept, logged or opened by us."""
    with capture_logs() as logs:
        codex = await CodexSeat(env=npm_clis.env(secret_home)).status()
        claude = await ClaudeSeat(enabled=True, env=npm_clis.env(secret_home)).status()
    assert (codex["available"], codex["reason"]) == (True, None)
    assert (claude["available"], claude["reason"]) == (True, None)
    assert [entry["event"] for entry in logs] == ["seat.detected", "seat.detected"]
    out, err = capfd.readouterr()
    assert_no_secret(codex, claude, logs, out, err)
    assert_no_credential_opened(audit)


@pytest.mark.parametrize("kind", ["codex", "claude"])
async def test_real_cli_turn_is_bounded_and_killed(
    npm_clis: NpmClis, secret_home: Path, kind: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """Signed in on a fake credential, the real CLI cannot get an answer: offline it retries
    (until our timeout kills it), online the provider refuses the key. Either way: an error of
    ours, no secret in it, and no process of that turn left running."""
    marker = f"WAYSTATION_TEST_RUN={uuid.uuid4().hex}"
    name, value = marker.split("=")
    seat = make_seat(kind, npm_clis.env(secret_home, **{name: value}), run_timeout_s=5)
    _info, backend = seat.backend()
    started = time.monotonic()
    with capture_logs() as logs, pytest.raises(WaystationError) as failed:
        await backend.generate(ask("say hi"))
    assert time.monotonic() - started < 30
    assert isinstance(failed.value, TurnTimeout | SeatRunFailed | RouteRefused), failed.value
    out, err = capfd.readouterr()
    assert_no_secret(str(failed.value), failed.value.to_json(), logs, out, err)
    if HAS_PROC:
        await asyncio.sleep(0.2)
        assert processes_with(marker) == []


# -- detection -------------------------------------------------------------------------------


async def test_claude_disabled_by_policy_never_runs_the_cli(
    fake_env: dict[str, str], seat_dir: Path, secret_home: Path
) -> None:
    seat = ClaudeSeat(env=fake_env)  # enabled defaults to False
    assert await seat.availability() == (False, CLAUDE_DISABLED)
    _info, backend = seat.backend()
    with pytest.raises(RouteRefused, match=r"disabled by policy"):
        await backend.generate(ask())
    assert not (seat_dir / "calls").exists()


async def test_cli_not_on_path(tmp_path: Path, home: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {"HOME": str(home), "PATH": str(empty)}
    assert await CodexSeat(env=env).availability() == (
        False,
        "codex CLI not found on PATH (npm install -g @openai/codex)",
    )
    claude = ClaudeSeat(enabled=True, env=env)
    assert await claude.availability() == (
        False,
        "claude CLI not found on PATH (npm install -g @anthropic-ai/claude-code)",
    )
    with pytest.raises(RouteRefused, match=r"claude CLI not found on PATH"):
        await claude.backend()[1].generate(ask())


async def test_signed_in_status_keeps_only_the_field(
    fake_env: dict[str, str], secret_home: Path, audit: list[tuple[str, str]]
) -> None:
    """The fake `claude auth status` also prints a field quoting the credential."""
    with capture_logs() as logs:
        claude = await ClaudeSeat(enabled=True, env=fake_env, model="sonnet").status()
        codex = await CodexSeat(env=fake_env).status()
    assert claude == {
        "name": "claude-seat",
        "provider": "anthropic",
        "auth_lane": "seat",
        "cost_lane": "provider_subscription",
        "model": "sonnet",
        "available": True,
        "reason": None,
    }
    assert (codex["available"], codex["reason"]) == (True, None)
    assert_no_secret(claude, codex, logs)
    assert_no_credential_opened(audit)


@pytest.mark.parametrize("kind", ["codex", "claude"])
async def test_detection_is_bounded(fake_env: dict[str, str], kind: str) -> None:
    seat = make_seat(kind, {**fake_env, "FAKE_SEAT_MODE": "hang-status"}, probe_timeout_s=0.5)
    started = time.monotonic()
    assert await seat.availability() == (False, f"{seat.status_command()} did not answer within 0.5 s")
    assert time.monotonic() - started < 5


async def test_detection_is_cached(fake_env: dict[str, str], seat_dir: Path) -> None:
    now = [1000.0]
    seat = CodexSeat(env=fake_env, clock=lambda: now[0])
    calls = seat_dir / "calls"
    results = await asyncio.gather(*(seat.availability() for _ in range(5)))
    assert set(results) == {(False, CODEX_NOT_SIGNED_IN)}
    assert calls.read_text().splitlines() == ["login status"]  # five callers, one asking
    now[0] += 29
    await seat.availability()
    assert len(calls.read_text().splitlines()) == 1
    now[0] += 2
    await seat.availability()
    assert len(calls.read_text().splitlines()) == 2
    seat.forget()
    await seat.availability()
    assert len(calls.read_text().splitlines()) == 3


# -- turns through fake CLIs -------------------------------------------------------------------


async def test_codex_turn(fake_env: dict[str, str], secret_home: Path, seat_dir: Path) -> None:
    seat = CodexSeat(env=fake_env, model="gpt-5-codex")
    info, backend = seat.backend()
    assert (info.name, info.provider, info.auth_lane, info.cost_lane, info.model) == (
        "codex-seat",
        "openai",
        "seat",
        "provider_subscription",
        "gpt-5-codex",
    )
    tokens: list[str] = []
    with capture_logs() as logs:
        generation = await backend.generate(ask("what is 2+2?", system="Be brief."), tokens.append)
    assert generation.text == "pong from codex"  # the last agent message is the answer
    assert (generation.prompt_tokens, generation.completion_tokens) == (21, 4)
    assert generation.tool_calls == []
    assert generation.model_answered is None  # codex exec --json does not say
    assert tokens == ["pong from codex"]
    args = args_of(seat_dir)
    assert args[:2] == ["exec", "--json"]
    assert args[args.index("--model") + 1] == "gpt-5-codex"
    assert args[-2] == "--"
    assert "Be brief." in args[-1] and "what is 2+2?" in args[-1]
    cwd = (seat_dir / "cwd").read_text().strip()
    assert cwd != os.getcwd() and not exists(cwd)  # a fresh temporary directory, removed after
    assert (seat_dir / "stdin").read_text().strip() == "eof"
    assert (seat_dir / "mark").read_text() == "passed-through"  # the environment passes through
    assert [entry["event"] for entry in logs] == ["seat.detected", "seat.exited"]
    assert logs[-1]["returncode"] == 0
    assert_no_secret(generation, logs)


async def test_claude_turn(fake_env: dict[str, str], secret_home: Path, seat_dir: Path) -> None:
    seat = ClaudeSeat(enabled=True, env=fake_env)
    info, backend = seat.backend("opus")
    assert (info.name, info.provider, info.model) == ("claude-seat", "anthropic", "opus")
    generation = await backend.generate(ask("-starts with a dash"))
    assert generation.text == "pong from claude"
    assert (generation.prompt_tokens, generation.completion_tokens) == (110, 5)
    assert generation.model_answered == "claude-sonnet-x"
    assert generation.telemetry == {"num_turns": "1"}
    args = args_of(seat_dir)
    assert args[:3] == ["-p", "--output-format", "json"]
    assert args[args.index("--model") + 1] == "opus"
    assert args[-2:] == ["--", "-starts with a dash"]
    assert (seat_dir / "stdin").read_text().strip() == "eof"


@pytest.mark.parametrize(("kind", "code"), [("codex", 3), ("claude", 2)])
async def test_nonzero_exit_is_an_error_without_the_output(
    fake_env: dict[str, str],
    secret_home: Path,
    kind: str,
    code: int,
    audit: list[tuple[str, str]],
    capfd: pytest.CaptureFixture[str],
) -> None:
    seat = make_seat(kind, {**fake_env, "FAKE_SEAT_MODE": "fail"})
    with capture_logs() as logs, pytest.raises(SeatRunFailed) as failed:
        await seat.backend()[1].generate(ask())
    assert failed.value.returncode == code
    assert f"exited {code}" in failed.value.message
    assert "not shown" in failed.value.message
    assert (logs[-1]["event"], logs[-1]["returncode"]) == ("seat.exited", code)
    assert set(logs[-1]) == {"event", "log_level", "route", "returncode", "duration_ms"}
    out, err = capfd.readouterr()
    assert_no_secret(str(failed.value), repr(failed.value), failed.value.to_json(), logs, out, err)
    assert_no_credential_opened(audit)


@pytest.mark.parametrize(
    ("kind", "mode", "error"),
    [
        ("codex", "turn-failed", SeatRunFailed),
        ("claude", "is-error", SeatRunFailed),
        ("claude", "garbage", SeatRunFailed),
        ("claude", "http-401", RouteRefused),
        ("claude", "http-429", ProviderError),
    ],
)
async def test_failures_the_cli_reports(
    fake_env: dict[str, str], secret_home: Path, kind: str, mode: str, error: type[WaystationError]
) -> None:
    seat = make_seat(kind, {**fake_env, "FAKE_SEAT_MODE": mode})
    with capture_logs() as logs, pytest.raises(error) as failed:
        await seat.backend()[1].generate(ask())
    if isinstance(failed.value, RouteRefused):
        assert failed.value.auth_lane == "seat"
        assert "sign in again" in failed.value.reason
    if isinstance(failed.value, ProviderError):
        assert failed.value.status == 429
    assert_no_secret(str(failed.value), failed.value.to_json(), logs)


@pytest.mark.parametrize("kind", ["codex", "claude"])
async def test_hanging_cli_is_killed_on_timeout(
    fake_env: dict[str, str], secret_home: Path, seat_dir: Path, kind: str
) -> None:
    seat = make_seat(kind, {**fake_env, "FAKE_SEAT_MODE": "hang"}, run_timeout_s=1)
    started = time.monotonic()
    with pytest.raises(TurnTimeout):
        await seat.backend()[1].generate(ask())
    assert time.monotonic() - started < 5
    pids = [int((seat_dir / name).read_text()) for name in ("pid", "child")]
    await gone(pids)  # the CLI and what it started


async def gone(pids: list[int], within_s: float = 10.0) -> None:
    """Every pid ends (a SIGKILL lands at once, but a loaded machine may take a moment to show it)."""
    deadline = time.monotonic() + within_s
    for _ in range(int(within_s / 0.05)):
        if not [pid for pid in pids if alive(pid)] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert [pid for pid in pids if alive(pid)] == []


@pytest.mark.parametrize("kind", ["codex", "claude"])
async def test_hanging_cli_is_killed_on_cancel(
    fake_env: dict[str, str], secret_home: Path, seat_dir: Path, kind: str
) -> None:
    seat = make_seat(kind, {**fake_env, "FAKE_SEAT_MODE": "hang"})
    turn = asyncio.create_task(seat.backend()[1].generate(ask()))
    await wait_for(seat_dir / "child")
    turn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await turn
    pids = [int((seat_dir / name).read_text()) for name in ("pid", "child")]
    await gone(pids)


async def test_cli_exiting_with_a_child_left_behind(
    fake_env: dict[str, str], secret_home: Path, seat_dir: Path
) -> None:
    """A CLI that exits while a child it started still holds stdout: the turn ends with the
    answer when the CLI exits, and the child is killed (asyncio alone would wait for it)."""
    seat = CodexSeat(env={**fake_env, "FAKE_SEAT_MODE": "linger"})
    started = time.monotonic()
    generation = await seat.backend()[1].generate(ask())
    assert generation.text == "done"
    assert time.monotonic() - started < 5
    await gone([int((seat_dir / "child").read_text())])


async def test_cli_gone_after_detection(tmp_path: Path, fake_env: dict[str, str], secret_home: Path) -> None:
    seat = CodexSeat(env=fake_env)
    assert await seat.availability() == (True, None)
    (tmp_path / "bin" / "codex").unlink()
    with pytest.raises(RouteRefused, match=r"codex CLI not found on PATH"):
        await seat.backend()[1].generate(ask())


async def test_prompt_limits(fake_env: dict[str, str], secret_home: Path) -> None:
    backend = CodexSeat(env=fake_env).backend()[1]
    with pytest.raises(EmptyPrompt):
        await backend.generate(ask("   "))
    with pytest.raises(InputError, match=r"takes at most"):
        await backend.generate(ask("x" * 200_000))


def test_flatten_messages() -> None:
    assert flatten_messages([{"role": "user", "content": " hello "}]) == "hello"
    prompt = flatten_messages(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "look: "}, {"type": "image_url"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "function": {"name": "web_fetch", "arguments": '{"url": "u"}'}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "page text"},
            {"role": "user", "content": "and now?"},
        ]
    )
    assert prompt == (
        "## System\nBe brief.\n\n"
        "## User\nlook: [image_url omitted]\n\n"
        '## Assistant\n[called tool web_fetch with {"url": "u"}]\n\n'
        "## Tool result (c1)\npage text\n\n"
        "## User\nand now?"
    )


async def test_backend_shape(fake_env: dict[str, str]) -> None:
    seat = CodexSeat(env=fake_env)
    info, backend = seat.backend()
    assert (backend.name, backend.model_path, backend.loaded, info.model) == ("codex-seat", "", False, None)
    assert seat.backend()[1] is backend
    await backend.unload()
    await backend.close()
    await seat.close()
