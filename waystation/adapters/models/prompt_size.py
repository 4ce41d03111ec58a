"""A prompt's size in tokens, found without holding the model for long (issue 20, item 9).

40,000 one-word messages (1.3 MiB) held the model for 118 s before they were refused as too long,
and every request behind them waited as long. Two things made it so, each fixed here:

- llama.cpp's tokenizer takes time quadratic in the special tokens of one text: each message of a
  chat template opens and closes with one (measured with SmolLM2: 10,000 messages, 8.8 s in one
  call; 0.7 s in pieces). `tokenized` cuts the text right after a special token, where the
  tokenizer starts a new fragment anyway, so the pieces give exactly the whole's tokens.
- Nothing was refused before the whole prompt was templated and tokenized. `at_least` is a bound
  from the characters alone: no token holds more than MAX_CHARS_PER_TOKEN of them, so a text of
  more characters than the context times that cannot fit, and is refused at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from waystation.adapters.models.base import Message

# No token of a model's vocabulary spells more characters than this: twice the longest of
# SmolLM2's 49,152 (32 bytes, a run of `=`), as vocabularies differ. A character is at least a
# byte, so a piece of 32 bytes is at most 32 characters.
MAX_CHARS_PER_TOKEN = 64
PIECE_CHARS = 16_384  # a piece long enough that calls cost little, short enough to stay linear


def at_least(messages: Sequence[Message]) -> int:
    """Fewer tokens than the messages' text can never make (the template only adds to it)."""
    return sum(len(m.get("content") or "") for m in messages) // MAX_CHARS_PER_TOKEN


def tokenized(llm: Any, text: str, boundary: str) -> list[int]:
    """llama.cpp's tokens for `text` (special tokens parsed, no BOS added), tokenized in pieces
    cut right after `boundary`, a string that is one special token (the template's end of turn);
    with no boundary, in one call."""
    tokens: list[int] = []
    start = 0
    while start < len(text):
        cut = text.find(boundary, start + PIECE_CHARS) if boundary else -1
        end = len(text) if cut < 0 else cut + len(boundary)
        tokens += llm.tokenize(text[start:end].encode(), add_bos=False, special=True)
        start = end
    return tokens


def special_boundary(llm: Any, candidate: str) -> str:
    """`candidate` when llama.cpp reads it as one special token (so cutting after it changes no
    token), else "" (no cuts)."""
    if not candidate:
        return ""
    tokens = llm.tokenize(candidate.encode(), add_bos=False, special=True)
    plain = llm.tokenize(candidate.encode(), add_bos=False, special=False)
    return candidate if len(tokens) == 1 and tokens != plain else ""
