"""A destination that is down while the host is online, then comes back: a real agent (forced
online), a real loopback destination started late on the port its tasks wait for, and a real turn
on the `compatible` route (a loopback server speaking OpenAI's wire format, tests/providers.py)
whose tool call finds the destination down.

The reported bug: such a task sat `pending`, due now, never tried, until an unrelated `queue add`
or a restart woke the flusher. Here nothing but the destination's return happens: the task made
over the API and the call a turn parked must both go out within seconds of it, once each, and the
turn resume with the answer. Meanwhile `queue show` says why they wait. The time from the
destination's return to each delivery is printed in the run's summary ("soak figures").
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from support.agentproc import Agent, Receiver, agent_env, port_nobody_uses, wait_for
from support.providers import ProviderServer, Reply

from waystation.adapters.models.base import ToolCall

pytestmark = pytest.mark.slow

T = TypeVar("T")

DOWN_S = 5.0  # how long the destination is away (long enough for a few retries to back off)
BACK_WITHIN_S = 15.0  # the bound on its tasks going out once it is back


class Provider:
    """The provider server on its own event loop in a thread, so this synchronous test can drive
    real processes meanwhile."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: ProviderServer = self.call(self._start())

    async def _start(self) -> ProviderServer:
        return await ProviderServer().__aenter__()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(15)

    def close(self) -> None:
        self.call(self.server.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def provider() -> Iterator[Provider]:
    running = Provider()
    yield running
    problems = list(running.server.problems)
    running.close()
    assert problems == [], "\n\n".join(problems)


def waiting_row(agent: Agent, task_id: str) -> str:
    shown = subprocess.run(
        [sys.executable, "-m", "waystation", "queue", "show", task_id],
        env=agent_env(agent.home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    rows = [line.partition("  ") for line in shown.stdout.splitlines()]
    return next(value.strip() for key, _, value in rows if key == "waiting")


def waits_for_the_destination(agent: Agent, task_id: str, port: int) -> None:
    """Pending (or being tried), no attempt counted, and saying why: not the network, the
    destination, and when it is tried next."""
    task = agent.api("GET", f"/v1/tasks/{task_id}").json()
    assert task["state"] in ("pending", "running") and task["attempts"] == 0, task
    refused = f"destination unreachable: 127.0.0.1:{port}: ConnectError"
    assert (task["last_error"] or "").startswith(refused), task
    waiting = waiting_row(agent, task_id)
    assert waiting.startswith(refused), waiting
    assert "; next try in " in waiting or waiting.endswith("; due now"), waiting


def delivered_after_return(port: int, path: str, down_since: float) -> tuple[float, str | None]:
    """Bring the destination back on `port` DOWN_S after `down_since` (monotonic), and wait for
    `path` to reach it, asking the agent nothing meanwhile: (seconds from its return to the
    delivery, the Idempotency-Key it came with). It must come once."""
    time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_since)))
    with Receiver(port=port) as back:
        back_at = time.time()  # listening: the receiver says its port once it accepts
        (hit,) = wait_for(
            lambda: back.hits(path), timeout=BACK_WITHIN_S + 10, interval=0.1, what=f"{path} delivered"
        )
        time.sleep(0.5)
        assert len(back.hits(path)) == 1  # the tries before the return reached nobody
    return hit.at - back_at, hit.key


def done(agent: Agent, task_id: str) -> dict[str, Any]:
    return wait_for(
        lambda: (t := agent.api("GET", f"/v1/tasks/{task_id}").json())["state"] == "done" and t,
        timeout=10,
        what=f"task {task_id} done",
    )


def test_tasks_for_a_destination_that_comes_back_go_out_within_seconds(
    agent_factory: Callable[..., Agent],
    receiver: Receiver,
    provider: Provider,
    soak_report: Callable[[str], None],
) -> None:
    agent = agent_factory()
    (agent.home / "config.toml").write_text(
        "[connectivity]\n"
        'mode = "online"\n'
        f'probe_url = "{receiver.url("/generate_204")}"\n'  # probed at each refusal; the mode decides
        "[routes.compatible]\n"
        f'base_url = "{provider.server.url}/v1"\n'
        'model = "compat-model"\n'
        'api_key = "sk-test-unreachable-comeback"\n'
    )
    agent.start()

    # 1. A turn whose call the destination refuses. Alone: any other task's retries would wake
    # the flusher and hide a parked call that does not.
    port = port_nobody_uses()
    url = f"http://127.0.0.1:{port}/ok/turn"
    provider.server.script(Reply(tool_calls=[ToolCall("call_1", "http_request", {"url": url})]))
    provider.server.script(Reply(text="It answered."))
    down_since = time.monotonic()
    answer = agent.api("POST", "/v1/turns", json={"prompt": f"Fetch {url} please.", "route": "compatible"})
    assert answer.status_code == 200, answer.text
    turn = answer.json()
    assert turn["tool_calls"][0]["status"] == "deferred", turn
    (turn_task,) = turn["deferred_task_ids"]
    waits_for_the_destination(agent, turn_task, port)
    turn_late, turn_key = delivered_after_return(port, "/ok/turn", down_since)
    assert turn_late < BACK_WITHIN_S, turn_late
    assert turn_key == done(agent, turn_task)["idempotency_key"]
    resumed = wait_for(
        lambda: (t := agent.api("GET", f"/v1/turns/{turn['turn_id']}").json())["state"] == "ok" and t,
        timeout=20,
        what="the turn to resume",
    )
    assert resumed["text"] == "It answered."

    # 2. The same through POST /v1/tasks.
    port = port_nobody_uses()
    down_since = time.monotonic()
    url = f"http://127.0.0.1:{port}/ok/api"
    posted = agent.api("POST", "/v1/tasks", json={"tool": "http_request", "args": {"url": url}})
    assert posted.status_code == 201, posted.text
    api_task = posted.json()
    wait_for(lambda: agent.api("GET", f"/v1/tasks/{api_task['id']}").json()["last_error"], what="a first try")
    waits_for_the_destination(agent, api_task["id"], port)
    api_late, api_key = delivered_after_return(port, "/ok/api", down_since)
    assert api_late < BACK_WITHIN_S, api_late
    assert api_key == api_task["idempotency_key"]
    assert done(agent, api_task["id"])["attempts"] == 1

    soak_report(
        f"destination back after {DOWN_S:g}s down -> delivered {turn_late:.2f}s later (a turn's parked "
        f"call), {api_late:.2f}s later (a POST /v1/tasks task); bound {BACK_WITHIN_S:g}s"
    )
