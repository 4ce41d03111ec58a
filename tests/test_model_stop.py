"""Stop strings (OpenAI's `stop`), fast: where a reply is cut, what a stream may show before it
knows, and the scripted double held to them as the real backends are. The real model and the
official client are in test_openai_compat.py."""

from __future__ import annotations

import pytest

from waystation.adapters.models.base import Generation, GenerationRequest
from waystation.adapters.models.scripted import ScriptedBackend
from waystation.adapters.models.stop import StopStream, cut_at_stop

ASK = [{"role": "user", "content": "Count."}]


def test_the_earliest_stop_string_cuts_whatever_its_place_in_the_list() -> None:
    assert cut_at_stop("one, two. three", [".", ","]) == ("one", True)
    assert cut_at_stop("one two", ["three"]) == ("one two", False)
    assert cut_at_stop("one two", []) == ("one two", False)


def stream_of(pieces: list[str], stop: list[str]) -> tuple[list[str], StopStream]:
    shown: list[str] = []
    stream = StopStream(stop, shown.append)
    for piece in pieces:
        stream.feed(piece)
        if stream.stopped:
            break
    stream.finish()
    return shown, stream


def test_a_stop_string_spanning_pieces_is_never_shown() -> None:
    shown, stream = stream_of(["Thought: go", "\nObser", "vation", ": rain"], ["Observation:"])
    assert "".join(shown) == stream.text == "Thought: go\n" and stream.stopped
    assert "Obser" not in "".join(shown)


def test_a_held_back_tail_goes_out_once_it_begins_no_stop_string() -> None:
    shown, stream = stream_of(["one\n", "\ntwo", " three"], ["\n\n\n"])
    assert shown == ["one", "\n\ntwo", " three"] and not stream.stopped


def test_what_could_begin_a_stop_string_is_held_only_that_long() -> None:
    shown: list[str] = []
    stream = StopStream(["END"], shown.append)
    stream.feed("the EN")
    assert shown == ["the "], "'EN' may begin END"
    stream.feed("D of it")
    assert stream.stopped and "".join(shown) == stream.text == "the "


@pytest.mark.parametrize(
    ("stop", "text", "finish"),
    [
        (("3",), "1 2 ", "stop"),
        ((" 4", "2 3"), "1 ", "stop"),
        (("9",), "1 2 3 4 5", "length"),
    ],
)
async def test_the_scripted_double_honours_stop(stop: tuple[str, ...], text: str, finish: str) -> None:
    backend = ScriptedBackend([Generation("1 2 3 4 5", finish_reason="length")])
    tokens: list[str] = []
    generation = await backend.generate(GenerationRequest(ASK, stop=stop), tokens.append)
    assert generation.text == text == "".join(tokens)
    assert generation.finish_reason == finish
