"""Tool results in the form a small local model answers from: the text, then the question.

Measured on pages with one fact each, the embedded model answered most questions when the page
text was pasted into the user's message before the question, and almost none when the same text
came back as a `tool` message after its own JSON call and it was asked to reply in JSON. So a
local model's answer after tool results is asked for as that control asks it: one user message
holding what the calls brought back as running text (the passages that bear on the question when
it is longer than the context allows), then the question again; and the answer is free text.

Whole-text rules only: which passages bear on the question is a plain word-overlap score, rarer
words counting more (as BM25 weighs them), the title always kept, the page's order preserved.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from waystation.adapters.models.base import URL_IN_TEXT, Message

# The text a local model is given from tool results (about 500 tokens): past it the embedded
# 135M model loses the fact among the rest. Measured on the page set's long pages (the fact deep
# in ~10,000 characters): answered 4 of 6 with 1,200 or 2,000 characters, 3 with 3,000, 2 with
# 6,000 (the page pasted whole: 4).
GROUNDED_CHARS = 2000
CHUNK_CHARS = 400  # passages are whole lines joined up to about this long
ELIDED = "…"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
_STOPWORDS = frozenset(
    {
        "a", "about", "above", "after", "again", "all", "am", "an", "and", "any", "are", "as", "at",
        "be", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did",
        "do", "does", "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has",
        "have", "having", "he", "her", "here", "hers", "him", "his", "how", "i", "if", "in", "into",
        "is", "it", "its", "itself", "just", "me", "more", "most", "my", "no", "nor", "not", "now",
        "of", "off", "on", "once", "only", "or", "other", "our", "out", "over", "own", "same", "she",
        "should", "so", "some", "such", "than", "that", "the", "their", "them", "then", "there",
        "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was",
        "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with",
        "would", "you", "your", "tell", "please", "page", "site", "fetch", "get", "read", "say",
        "give", "find", "show", "summarise", "summarize", "according", "http", "https", "www", "com",
        "html",
    }
)  # fmt: skip


def has_any_results(messages: Sequence[Message]) -> bool:
    """Whether the conversation holds tool results (what a smaller budget could shorten)."""
    return any(m.get("role") == "tool" for m in messages)


def budget_for(context: int | None, max_tokens: int) -> int:
    """A first guess at the characters of tool results a context of `context` tokens holds
    beside the reply (English runs near 4 characters a token; 3 leaves room for the rest)."""
    return (
        GROUNDED_CHARS
        if context is None
        else max(CHUNK_CHARS, min(GROUNDED_CHARS, (context - max_tokens) * 3))
    )


def grounded(messages: Sequence[Message], budget_chars: int = GROUNDED_CHARS) -> list[Message]:
    """The conversation with its last exchange (question, calls, results) rewritten as one user
    message: each result's text (the passages that match the question, within `budget_chars` in
    all), then the question."""
    at = _last_user(messages)
    results = [text(m) for m in messages[at + 1 :] if m.get("role") == "tool"]
    if at < 0 or not results:
        return list(messages)
    question = text(messages[at])
    share = max(CHUNK_CHARS, budget_chars // len(results))
    parts = [_flat(relevant(result, question, share)) for result in results]
    return [*messages[:at], {"role": "user", "content": "\n\n".join([*parts, question])}]


def trimmed(messages: Sequence[Message], budget_chars: int = GROUNDED_CHARS) -> list[Message]:
    """The conversation with each tool result cut to the passages that match the last question
    (for a step that may still call a tool, where results stay tool messages)."""
    at = _last_user(messages)
    results = sum(1 for m in messages if m.get("role") == "tool")
    if not results:
        return list(messages)
    question = text(messages[at]) if at >= 0 else ""
    share = max(CHUNK_CHARS, budget_chars // results)
    return [
        {**m, "content": relevant(text(m), question, share)} if m.get("role") == "tool" else m
        for m in messages
    ]


def relevant(content: str, question: str, budget_chars: int) -> str:
    """`content` whole when it fits; else its first line (a page's status or title) and the
    passages sharing most words with the question, in their order, gaps marked."""
    if len(content) <= budget_chars:
        return content
    chunks = _chunks(content)
    terms = _terms(URL_IN_TEXT.sub(" ", question))  # a URL's digits and path say nothing of the answer
    seen = [_terms(chunk) for chunk in chunks]
    frequency = {t: sum(t in s for s in seen) for t in terms}
    weight = {t: math.log((len(chunks) + 1) / (frequency[t] + 0.5)) for t in terms if frequency[t]}
    scores = [sum(weight.get(t, 0.0) for t in s) for s in seen]
    ranked = sorted(range(1, len(chunks)), key=lambda i: (-scores[i], i))
    chosen, used = {0}, len(chunks[0])
    for i in ranked:
        if used + len(chunks[i]) + 2 > budget_chars:
            continue
        chosen.add(i)
        used += len(chunks[i]) + 2
    out: list[str] = []
    for i in sorted(chosen):
        if out and i - 1 not in chosen:
            out.append(ELIDED)
        out.append(chunks[i][: budget_chars - len(chunks[0]) - 2] if i else chunks[i])
    if max(chosen) < len(chunks) - 1:
        out.append(ELIDED)
    return "\n".join(out)


def text(message: Message) -> str:
    """A message's text: its string content, or the text parts of OpenAI content parts."""
    content: Any = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _flat(content: str) -> str:
    """One paragraph: measured on the page set, the model answered more often from a page's
    text run together (as a person pasting it gets it) than from the same text line by line."""
    return " ".join(content.split())


def _last_user(messages: Sequence[Message]) -> int:
    return max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)


def _chunks(content: str) -> list[str]:
    """The first line alone, then the lines joined into passages of about CHUNK_CHARS."""
    first, _, rest = content.partition("\n")
    chunks = [first]
    current: list[str] = []
    for line in _sentences(rest.split("\n")):
        if current and sum(map(len, current)) + len(line) > CHUNK_CHARS:
            chunks.append("\n".join(current))
            current = []
        if line.strip():
            current.append(line)
    if current:
        chunks.append("\n".join(current))
    return chunks


def _sentences(lines: list[str]) -> list[str]:
    """Lines, with one longer than a passage split at its sentences."""
    out: list[str] = []
    for line in lines:
        out += _SENTENCE_END.split(line) if len(line) > CHUNK_CHARS else [line]
    return out


def _terms(text_: str) -> set[str]:
    return {
        _stem(w) for w in _TOKEN.findall(text_.lower()) if w not in _STOPWORDS and (len(w) > 2 or w.isdigit())
    }


def _stem(word: str) -> str:
    """A light stem, so "fares" meets "fare" and "versions" meets "version"."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    for suffix in ("ing", "ed", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix) and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word
