"""A call's result as the model reads it (status, and a page as its title and readable text) and
as a person reading the turn sees it (one line).

The model's text is kept whole up to a generous bound: which part of it bears on the question
is chosen when the model is asked, by the backend that knows its context (adapters/models/
grounding.py), not here by cutting everything after the first few thousand characters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from waystation.station.turns.page_text import page_text

# What a turn keeps of one result for the model (about 6,000 tokens): the turn's row stores it,
# and a delivery's body is already capped at 64 KiB.
RESULT_CHARS_KEPT = 24_000


def result_for_model(result: Mapping[str, Any] | None, error: str | None = None) -> str:
    """An HTTP answer as text: the body (an HTML page as its title line and readable text), after the
    status when it is not a success (a model told only "HTTP 200" answers with that)."""
    if result is None:
        return _cut(f"no answer: {error or 'the call could not be made'}")
    status = result.get("status")
    headers = result.get("headers") or {}
    body = str(result.get("body") or "")
    content_type = str(headers.get("content-type", "")).lower()
    if "html" in content_type or body.lstrip()[:15].lower().startswith(("<!doctype html", "<html")):
        title, text = page_text(body)
        body = f"{title}\n{text}" if title else text
    succeeded = isinstance(status, int) and 200 <= status < 300
    return _cut(body if succeeded else f"HTTP {status}\n{body}")


def result_summary(result: Mapping[str, Any] | None, error: str | None = None) -> str:
    """One line on what a call got, for a person reading the turn: the status, and a page's
    title or the start of the body."""
    if result is None:
        return f"no answer: {error or 'not sent'}"
    status = f"HTTP {result.get('status')}"
    told = result_for_model(result).removeprefix(status).split("\n")
    first = next((line for line in told if line.strip()), "")
    return f"{status} · {first[:80]}" if first else status


def _cut(text: str) -> str:
    return text if len(text) <= RESULT_CHARS_KEPT else text[:RESULT_CHARS_KEPT] + "…(truncated)"
