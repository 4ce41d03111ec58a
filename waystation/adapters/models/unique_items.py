"""Finding, as a grammar-constrained JSON reply grows, the first array item that repeats an
earlier item of the same array.

A small model held to `{"fruits": {"type": "array", "items": {"type": "string"}}}` lists a few
fruits and then cycles through them again until max_tokens, so the reply is cut off and is no
JSON at all. The grammar cannot forbid that: llama.cpp's JSON Schema converter has no
`uniqueItems`, and a grammar cannot remember which strings came before. So the backend watches
the text: at the first repeated item it goes back to the end of the item before it and closes the
array there (llamacpp.py resumes the grammar from that point, so the rest of the reply still
matches the schema). The repeat is the model's signal that the list is done.

Strings, objects and arrays are items a list does not hold twice; numbers, booleans and null
may repeat (dice rolls, flags), so they are never cut.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

GUARDED_STARTS = ('"', "{", "[")  # the first character of an item that may not repeat


@dataclass
class _Container:
    kind: str  # "[" or "{"
    item_start: int = 0  # where the current item's text begins (arrays)
    last_end: int | None = None  # where the last completed item's text ends (arrays)
    items: set[str] = field(default_factory=set)  # completed items, as canonical JSON


class ArrayItems:
    """Reads a JSON text piece by piece; `repeat_at` is where to cut it when an item repeats."""

    def __init__(self) -> None:
        self.text = ""
        self.repeat_at: int | None = None  # the end of the item before the first repeat
        self._open: list[_Container] = []
        self._in_string = False
        self._escaped = False

    def feed(self, piece: str) -> None:
        start = len(self.text)
        self.text += piece
        for at in range(start, len(self.text)):
            if self.repeat_at is not None:
                return  # the reply is cut here: what follows is never read
            self._read(self.text[at], at)

    @property
    def settled(self) -> int:
        """How much of the text no cut can reach: all of it but what follows the last completed
        item of an open array (the next item may still turn out to be a repeat)."""
        ends = [c.last_end for c in self._open if c.kind == "[" and c.last_end is not None]
        if self.repeat_at is not None:
            ends.append(self.repeat_at)
        return min(ends, default=len(self.text))

    def _read(self, char: str, at: int) -> None:
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
            return
        top = self._open[-1] if self._open else None
        if char == '"':
            self._in_string = True
        elif char in "[{":
            self._open.append(_Container(char, item_start=at + 1))
        elif char == "," and top is not None and top.kind == "[":
            self._item_ends(top, at)
            top.item_start = at + 1
        elif char in "]}" and top is not None:
            if top.kind == "[":
                self._item_ends(top, at)
            self._open.pop()

    def _item_ends(self, array: _Container, at: int) -> None:
        raw = self.text[array.item_start : at]
        item = raw.strip()
        if not item:  # an empty array's `]`
            return
        end = array.item_start + len(raw.rstrip())
        if item.startswith(GUARDED_STARTS):
            try:
                key = json.dumps(json.loads(item), sort_keys=True)
            except ValueError:  # not JSON after all: nothing to compare
                key = None
            if key is not None and key in array.items and array.last_end is not None:
                self.repeat_at = array.last_end
                return
            if key is not None:
                array.items.add(key)
        array.last_end = end
