"""Answers from what the calls brought back, scored against the same model given the page.

Each page of tests/data/grounded_pages.json (one fact among navigation, cookie banners, footers,
sidebars, or deep in a long article) is served on loopback. A real agent on the real embedded
model is asked offline to fetch it and answer a question: the call parks, the agent is put
online, the call is delivered, the turn resumes and answers. The control, in the same run and on
the same agent, is the same model given the page's visible text in its prompt and the question
(what a user pasting the page would do). A regression in how results reach the model, or in how
the last step is asked, falls below the control; a turn that asks for the same call twice fails.
By default every other page runs (12, about a minute on 2 cores); all 24 with WAYSTATION_SOAK=long.
"""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from grounded_page_set import Page, agent_prompt, control_prompt, pages
from support.agentproc import Agent

pytestmark = pytest.mark.slow

ANSWER_TOKENS = 96  # room for the call (its URL pinned, ~40 tokens); the facts are a few words


class PageServer:
    """The page set on a loopback HTTP server, each page at /<slug>."""

    def __init__(self, served: list[Page]) -> None:
        by_path = {f"/{p.slug}": p.html().encode() for p in served}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = by_path.get(self.path)
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, page: Page) -> str:
        return f"{self.base}/{page.slug}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def page_server() -> Iterator[PageServer]:
    server = PageServer(pages())
    yield server
    server.close()


def _ended(client: httpx.Client, turn_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        turn = client.get(f"/v1/turns/{turn_id}").json()
        if turn["state"] not in ("running", "parked", "resuming", "deferred"):
            return dict(turn)
        time.sleep(0.2)
    raise AssertionError(f"turn {turn_id} did not end within {timeout:g}s")


def chosen_pages(every: int) -> list[Page]:
    """Every `every`th page of the set (all of them under WAYSTATION_SOAK=long), or the pages
    PAGES names (slugs, comma-separated)."""
    if named := os.environ.get("PAGES"):
        return [p for p in pages() if p.slug in named.split(",")]
    return pages()[::every]


@pytest.mark.timeout(1200)
def test_resumed_turns_answer_from_the_pages_as_the_model_given_them_does(
    agent_factory: Any,
    page_server: PageServer,
    soak_length: Callable[[int, int], int],
    soak_report: Callable[[str], None],
) -> None:
    agent: Agent = agent_factory({"WAYSTATION_CONNECTIVITY__MODE": "offline"}).start()
    the_set = chosen_pages(soak_length(2, 1))
    with agent.client(timeout=300.0) as client:
        parked: dict[str, str] = {}
        for page in the_set:
            asked = {"prompt": agent_prompt(page, page_server.url(page)), "max_tokens": ANSWER_TOKENS}
            answer = client.post("/v1/turns", json=asked)
            assert answer.status_code == 200, answer.text
            turn = answer.json()
            assert turn["status"] == "parked", turn
            parked[page.slug] = turn["turn_id"]
        agent.set_mode("online")
        resumed = {slug: _ended(client, turn_id, 600) for slug, turn_id in parked.items()}
        control = {
            page.slug: client.post(
                "/v1/turns",
                json={"prompt": control_prompt(page), "tool_choice": "none", "max_tokens": ANSWER_TOKENS},
            ).json()["text"]
            for page in the_set
        }

    agent_right = [
        p.slug for p in the_set if resumed[p.slug]["state"] == "ok" and p.answered(resumed[p.slug]["text"])
    ]
    control_right = [p.slug for p in the_set if p.answered(control[p.slug])]
    calls = [len(t["tool_calls"]) for t in resumed.values()]
    repeated = sum(c["status"] == "repeated" for t in resumed.values() for c in t["tool_calls"])
    soak_report(
        f"grounded answers: agent {len(agent_right)}/{len(the_set)}, "
        f"control {len(control_right)}/{len(the_set)}; calls per turn {sum(calls) / len(calls):.2f}, "
        f"repeated {repeated}"
    )
    for p in the_set:
        told = resumed[p.slug]["text"] or f"({resumed[p.slug]['state']}: {resumed[p.slug]['reason']})"
        soak_report(f"  {p.slug:18} agent={told[:70]!r} control={control[p.slug][:50]!r}")
    assert all(t["state"] == "ok" for t in resumed.values()), [t["reason"] for t in resumed.values()]
    assert calls == [1] * len(the_set) and repeated == 0  # one call each, never asked for twice
    # As good as the page pasted in, within the noise of a 135M model (whose greedy answer can
    # change with what its cache held before): one page in six, 4 of all 24 (it fell short by 0-3
    # in eight runs of the 24); before answers were grounded it was 2 of 24.
    assert len(agent_right) >= len(control_right) - max(1, len(the_set) // 6)
    assert len(agent_right) >= 0.5 * len(the_set)
