"""The JSON objects written in messages: what a model's write may carry (the user's own JSON).

A user writes JSON in prose ("POST {"event": "deploy"} to ..."), in a code fence, pretty-printed
over several lines, or not quite (single quotes, a trailing comma, a `{placeholder}`). Balanced
braces are found in one pass (a brace inside a JSON string does not count), and each span is
given to the JSON parser, the outermost first: an object found is taken whole (the objects inside
it are its parts), and where a span does not parse, the spans inside it are tried.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

# What the brace matcher looks at; everything else is skipped by the regex engine. An escape is
# one token, so an escaped quote never ends a string.
_TOKENS = re.compile(r'[{}"\n]|\\.', re.DOTALL)
# A message is searched this far: a write's JSON is at most 1 MiB (http.MAX_REQUEST_BODY_BYTES), and
# this keeps a huge prompt of braces from holding the event loop for more than a moment. JSON
# written further on is not looked for (a write of it is refused, never let through).
SEARCHED_CHARS = 1024 * 1024


def user_objects(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The JSON objects a model's write may carry: those written in the user's messages."""
    return json_objects_in(m for m in messages if m.get("role") == "user")


def json_objects_in(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The JSON objects written in the messages' text, in order, each once."""
    found: dict[str, dict[str, Any]] = {}
    for message in messages:
        text = str(message.get("content") or "")[:SEARCHED_CHARS]
        for value in _objects_in(text):
            found.setdefault(json.dumps(value, sort_keys=True), value)
    return list(found.values())


def _objects_in(text: str) -> list[dict[str, Any]]:
    parsed: dict[str, dict[str, Any] | None] = {}  # by their text: the same text is parsed once
    taken_until = 0
    # Spans nested deep inside spans that do not parse would be parsed once per level; the parser
    # reads the text a few times over at most, and what is not found by then (only in such text)
    # is not taken for JSON the user gave: a write of it is refused, never let through.
    budget = 4 * len(text) + 4096
    for start, end in _brace_spans(text):
        if start < taken_until:
            continue  # inside an object already taken
        budget -= end - start
        if budget < 0:
            break
        written = text[start:end]
        if written not in parsed:
            try:
                parsed[written] = json.loads(written, parse_constant=_not_json)
            except (ValueError, RecursionError):
                parsed[written] = None
        if parsed[written] is not None:
            taken_until = end
    return [value for value in parsed.values() if value is not None]


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")  # Python's parser takes NaN and Infinity


def _brace_spans(text: str) -> list[tuple[int, int]]:
    """Every balanced {...} (start, end), an outer span before the spans inside it."""
    spans: list[tuple[int, int]] = []
    opens: list[int] = []
    in_string = False
    for token in _TOKENS.finditer(text):
        char = token.group()
        if in_string:
            # A JSON string ends at its quote; a raw line break is not JSON, and ending the string
            # there keeps a stray quote in prose from hiding the rest of the text.
            in_string = char not in ('"', "\n")
        elif char == "{":
            opens.append(token.start())
        elif char == "}" and opens:
            spans.append((opens.pop(), token.end()))
        elif char == '"' and opens:
            in_string = True
    return sorted(spans)
