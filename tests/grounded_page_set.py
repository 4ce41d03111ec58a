"""The page set of tests/data/grounded_pages.json: each page's body wrapped in a layout with the
boilerplate real sites carry, its visible text (what a person pasting the page would paste), and
the scoring of answers. Shared by tests/test_grounded_answers.py (thresholds) and
bench/grounded_answers.py (figures)."""

from __future__ import annotations

import html.parser
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAGES = Path(__file__).parent / "data" / "grounded_pages.json"

_HEAD = (
    "<head><title>{title}</title><meta charset='utf-8'><style>body {{ font-family: sans-serif }}</style>"
    "<script>window.dataLayer = []; function track() {{ return 'visit'; }}</script></head>"
)
_MENU = "".join(
    f"<li><a href='/{w.lower()}'>{w}</a></li>" for w in ("Home", "News", "Shop", "Events", "About", "Contact")
)
_SOCIAL = (
    "<a href='https://www.facebook.com/coastline'>Facebook</a> <a href='https://x.com/coastline'>X</a> "
    "<a href='https://www.instagram.com/coastline'>Instagram</a>"
)
_COOKIES = (
    "We use cookies to improve your experience and to show you relevant offers. "
    "By clicking Accept all you agree to our cookie policy. "
    "<button>Accept all</button> <button>Settings</button>"
)
_LEGAL = (
    "© 2026 Coastline Media Ltd. All rights reserved. "
    "<a href='/privacy'>Privacy</a> <a href='/terms'>Terms</a>"
)
_ASIDE = (
    "<h3>Popular this week</h3><ul><li><a href='/a'>Ten ways to save on energy bills</a></li>"
    "<li><a href='/b'>Our top 5 weekend walks</a></li><li><a href='/c'>Win a 100 EUR voucher</a></li></ul>"
    "<p>Subscribe to our newsletter for weekly deals: only 1.99 a month.</p>"
)
_FILLER = [
    "The coastal path was resurfaced last spring and now connects the two harbours along the cliffs.",
    "Volunteers counted 214 seabirds during the annual survey, slightly fewer than the year before.",
    "The town council meets on the first Tuesday of each month in the hall above the market.",
    "Local schools will take part in a reading challenge that runs until the end of the term.",
    "A new bus route, number 31, links the hospital with the retail park every half hour.",
    "Fishermen reported calm seas for most of the season, with only three days lost to storms.",
    "The market sells fruit, vegetables and cheese from farms within 40 kilometres of the town.",
    "Restoration of the clock tower is expected to cost about 1.2 million and take two years.",
    "The sailing club offers beginner courses for adults on Sunday mornings from May to August.",
    "Visitors can borrow bicycles from the tourist office for a deposit of 20 and an ID card.",
    "The choir will sing at the lighthouse on midsummer evening, weather permitting.",
    "Road works on the high street will close one lane between 7 and 10 in the morning.",
]


@dataclass(frozen=True)
class Page:
    slug: str
    layout: str
    title: str
    body: str
    question: str
    answers: tuple[str, ...]

    def html(self) -> str:
        """The page as served: its body inside the layout's boilerplate."""
        head = _HEAD.format(title=self.title)
        if self.layout == "semantic":
            inner = (
                f"<header><div class='logo'>Coastline Portal</div></header><nav><ul>{_MENU}</ul></nav>"
                f"<main>{self.body}</main><aside>{_ASIDE}</aside>"
                f"<div id='cookie-consent'>{_COOKIES}</div><footer>{_LEGAL} {_SOCIAL}</footer>"
            )
        elif self.layout == "classed":
            inner = (
                "<div class='site-header'>Coastline Portal</div>"
                f"<div class='main-menu'><ul>{_MENU}</ul></div>"
                f"<div class='content'>{self.body}</div><div class='sidebar'>{_ASIDE}</div>"
                f"<div class='cookie-banner'>{_COOKIES}</div>"
                f"<div class='site-footer'>{_LEGAL} {_SOCIAL}</div>"
            )
        elif self.layout == "bare":  # no element or name says what is boilerplate: only the text does
            links = " | ".join(
                f"<a href='/{w.lower()}'>{w}</a>" for w in ("Home", "Shop", "About", "Contact")
            )
            inner = (
                f"<div>{links}</div><p>{_COOKIES}</p><div>{self.body}</div><p>{_LEGAL}</p><p>{_SOCIAL}</p>"
            )
        elif self.layout == "long":  # the fact lies deep, past what a first-N-characters cut keeps
            filler = "".join(f"<p>{' '.join(_FILLER[i:] + _FILLER[:i])}</p>" for i in range(8))
            inner = (
                f"<nav><ul>{_MENU}</ul></nav><article><h1>{self.title}: local notes</h1>{filler}"
                f"{self.body}<p>{' '.join(_FILLER)}</p></article><footer>{_LEGAL}</footer>"
            )
        else:
            raise ValueError(f"unknown layout {self.layout!r}")
        return f"<!doctype html><html>{head}<body>{inner}</body></html>"

    def visible_text(self) -> str:
        """Every string a browser shows (what a person pasting the page would paste)."""
        reader = _Visible()
        reader.feed(self.html())
        return " ".join("".join(reader.text).split())

    def answered(self, answer: str) -> bool:
        said = " ".join(answer.lower().split())
        return any(a.lower() in said for a in self.answers)


def pages() -> list[Page]:
    data = json.loads(PAGES.read_text())
    return [Page(**{**p, "answers": tuple(p["answers"])}) for p in data["pages"]]


def agent_prompt(page: Page, url: str) -> str:
    """How a user asks the agent: the page's URL and the question."""
    return f"Fetch {url} and answer: {page.question}"


def control_prompt(page: Page) -> str:
    """How a user asks the same model without tools: the page's text pasted, then the question."""
    return f"{page.visible_text()}\n\n{page.question}"


class _Visible(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self._hidden += tag in ("script", "style", "head")
        self.text.append(" ")

    def handle_endtag(self, tag: str) -> None:
        self._hidden -= tag in ("script", "style", "head")
        self.text.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.text.append(data)
