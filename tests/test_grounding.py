"""Tool results in the form a local model answers from (adapters/models/grounding.py): the last
exchange becomes the results' text then the question; a long result keeps the passages that
match the question, in order, whatever their place in the page."""

from __future__ import annotations

from waystation.adapters.models import grounding
from waystation.adapters.models.base import ToolCall, urls_to_call

QUESTION = "Fetch http://127.0.0.1:8000/fares and tell me the adult fare."
CALL = ToolCall("call_1", "web_fetch", {"url": "http://127.0.0.1:8000/fares"}).to_json()
FILLER = [f"Line {i}: the coastal path and the market are open as usual this week." for i in range(200)]


def _exchange(*results: str) -> list[dict[str, object]]:
    return [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        *({"role": "tool", "tool_call_id": "call_1", "content": r} for r in results),
    ]


def test_the_last_exchange_becomes_the_results_then_the_question() -> None:
    messages = grounding.grounded(_exchange("Fares\nAdult fare:\n4.50 EUR."))
    assert messages[:3] == _exchange()[:3]  # what came before is kept as it was
    # The text runs together, as a person pasting the page gets it.
    assert messages[3:] == [{"role": "user", "content": f"Fares Adult fare: 4.50 EUR.\n\n{QUESTION}"}]


def test_several_results_each_come_before_the_question() -> None:
    content = grounding.grounded(_exchange("first page", "second page"))[-1]["content"]
    assert content == f"first page\n\nsecond page\n\n{QUESTION}"


def test_a_conversation_without_results_is_left_alone() -> None:
    messages = _exchange()[:4]
    assert grounding.grounded(messages) == messages
    assert not grounding.has_any_results(messages)
    assert grounding.grounded(_exchange("x")) != _exchange("x")  # results after the question: rewritten


def test_a_long_result_keeps_the_passages_that_match_the_question_in_order() -> None:
    page = "\n".join(["Harbour ferry", *FILLER[:120], "The adult fare is 4.50 EUR per trip.", *FILLER[120:]])
    assert len(page) > 10_000
    kept = grounding.relevant(page, QUESTION, 1500)
    assert len(kept) <= 1500
    assert kept.startswith("Harbour ferry\n")
    assert "The adult fare is 4.50 EUR per trip." in kept  # not in the first 2,000 characters
    assert grounding.ELIDED in kept
    lines = [line for line in kept.split("\n") if line.startswith("Line")]
    assert lines == sorted(lines, key=lambda line: int(line.split(":")[0].split()[1]))  # page order


def test_a_long_paragraph_is_cut_at_its_sentences() -> None:
    paragraph = " ".join([*FILLER[:60], "Children under twelve travel free.", *FILLER[60:120]])
    kept = grounding.relevant(f"Fares\n{paragraph}", "Do children travel free?", 800)
    assert "Children under twelve travel free." in kept and len(kept) <= 800


def test_a_result_that_fits_is_given_whole() -> None:
    assert grounding.relevant("short page", QUESTION, 1000) == "short page"


def test_the_budget_shrinks_with_the_context_and_is_bounded() -> None:
    assert grounding.budget_for(None, 256) == grounding.GROUNDED_CHARS
    assert grounding.budget_for(100_000, 256) == grounding.GROUNDED_CHARS
    assert grounding.budget_for(600, 256) == 344 * 3
    assert grounding.budget_for(300, 256) == grounding.CHUNK_CHARS


def test_results_stay_tool_messages_when_a_step_may_still_call() -> None:
    page = "\n".join(["Harbour ferry", *FILLER, "The adult fare is 4.50 EUR."])
    messages = grounding.trimmed(_exchange(page), 2000)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "tool"]
    assert "4.50 EUR" in str(messages[-1]["content"]) and len(str(messages[-1]["content"])) <= 2000


def test_urls_already_called_are_not_to_be_called_again() -> None:
    two = "Compare http://a.example/x and http://b.example/y."
    assert urls_to_call([{"role": "user", "content": two}]) == ["http://a.example/x", "http://b.example/y"]
    called = ToolCall("c", "web_fetch", {"url": "http://a.example/x"}).to_json()
    messages = [
        {"role": "user", "content": two},
        {"role": "assistant", "content": None, "tool_calls": [called]},
        {"role": "tool", "tool_call_id": "c", "content": "see http://c.example/z"},
    ]
    assert urls_to_call(messages) == ["http://b.example/y"]  # a link in a result is not the user's ask
