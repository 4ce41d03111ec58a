"""The prompt set of tests/data/turn_prompts.json and how a run over it is scored; shared by
tests/test_turn_prompts.py (thresholds) and bench/tool_calls.py (figures, before and after).

A run posts each prompt as a turn to an agent that is offline, so a call that would go out is
parked (and one the agent will not make is refused); nothing is delivered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMPTS = Path(__file__).parent / "data" / "turn_prompts.json"
CATEGORIES = ("no_tool", "url", "ambiguous")
URL = re.compile(r"https?://[^\s?]+[^\s.,;:!?]")


def prompt_set(base: str) -> list[tuple[str, str]]:
    """(category, prompt) pairs, the destination's base URL filled in."""
    data = json.loads(PROMPTS.read_text())
    return [(category, text.format(base=base)) for category in CATEGORIES for text in data[category]]


@dataclass
class Score:
    prompts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    false_calls: int = 0  # a network call parked for a prompt that asked for none
    calls: int = 0  # calls the model made, all prompts
    invented: int = 0  # ... to a URL the prompt did not name
    invented_parked: int = 0  # ... and parked anyway (would be sent once online)
    right: int = 0  # URL prompts whose named URL was called (parked)

    def add(self, category: str, prompt: str, turn: Mapping[str, Any]) -> None:
        named = set(URL.findall(prompt))
        self.prompts[category] += 1
        calls = [c for c in turn.get("tool_calls") or [] if c.get("tool") in ("http_request", "web_fetch")]
        parked = [c for c in calls if c.get("status") == "deferred"]
        invented = [c for c in calls if str((c.get("arguments") or {}).get("url")) not in named]
        self.calls += len(calls)
        self.invented += len(invented)
        self.invented_parked += len([c for c in invented if c.get("status") == "deferred"])
        if category != "url" and parked:
            self.false_calls += 1
        if category == "url" and any(str((c.get("arguments") or {}).get("url")) in named for c in parked):
            self.right += 1

    def lines(self) -> list[str]:
        asked = self.prompts["no_tool"] + self.prompts["ambiguous"]
        return [
            f"false network calls: {self.false_calls} of {asked} prompts that named no URL",
            f"invented URLs: {self.invented} of {self.calls} calls, {self.invented_parked} of them parked",
            f"right calls: {self.right} of {self.prompts['url']} prompts naming a URL",
        ]


def run(post_turn: Callable[[str], Mapping[str, Any]], base: str) -> Score:
    score = Score()
    for category, prompt in prompt_set(base):
        score.add(category, prompt, post_turn(prompt))
    return score
