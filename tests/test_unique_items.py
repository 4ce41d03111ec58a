"""Finding the first repeated array item in a growing JSON reply (adapters/models/unique_items.py):
pure, fast. The real model closing a `list[str]` is in test_openai_tools.py."""

from __future__ import annotations

import json

import pytest

from waystation.adapters.models.unique_items import ArrayItems


def read(text: str, piece: int = 3) -> ArrayItems:
    items = ArrayItems()
    for at in range(0, len(text), piece):
        items.feed(text[at : at + piece])
    return items


def closed(text: str) -> str:
    items = read(text)
    assert items.repeat_at is not None, "a repeat was found"
    return text[: items.repeat_at] + "]"


def test_the_array_closes_after_the_item_before_the_first_repeat() -> None:
    looping = '{ "days": [ "Mon", "Tue", "Wed", "Mon", "Tue", "Wed", "Mon'
    assert closed(looping) == '{ "days": [ "Mon", "Tue", "Wed"]'
    assert json.loads(closed(looping) + "}") == {"days": ["Mon", "Tue", "Wed"]}


def test_items_are_compared_as_json_and_within_their_own_array() -> None:
    assert read('{"a": ["x", "y"], "b": ["x", "y"]}').repeat_at is None, "other arrays may share items"
    assert read('[["x", "y"], ["y", "x"]]').repeat_at is None
    assert closed('[{"k": 1, "j": 2}, {"j": 2, "k": 1}, ') == '[{"k": 1, "j": 2}]'
    assert closed('["caf\\u00e9", "café",') == '["caf\\u00e9"]'


def test_brackets_and_commas_inside_strings_are_text() -> None:
    assert read('["a, b", "a", " b"]').repeat_at is None
    assert read('["[x", "x]", "\\"x"]').repeat_at is None
    assert closed('["a \\" ]", "b", "a \\" ]",') == '["a \\" ]", "b"]'


@pytest.mark.parametrize("items", ["[1, 1, 2]", "[true, true]", "[null, null]", "[]", '{"a": [ ]}'])
def test_numbers_booleans_and_null_may_repeat(items: str) -> None:
    assert read(items).repeat_at is None


def test_text_after_the_last_whole_item_is_not_settled() -> None:
    items = read('{"fruits": ["apple", "pear", "app', piece=1)
    assert items.text[: items.settled] == '{"fruits": ["apple", "pear"'
    items.feed('le", "plum"]}')
    assert items.repeat_at is not None and items.settled == items.repeat_at
    done = read('{"fruits": ["apple", "pear"]}')
    assert done.settled == len(done.text), "a closed array is settled whole"
