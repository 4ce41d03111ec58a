"""A web page as the text a reader would read: its title and main text, without navigation,
cookie banners, footers and other boilerplate.

A small model handed a page's every string (menus, "Accept all cookies", "© 2026 ...", social
links) answers from them as readily as from the article: measured on pages with one fact each,
the page text with its boilerplate answered fewer questions than the same text without it. What
counts as boilerplate follows readability-style rules: the elements HTML gives for it (nav,
header, footer, aside, forms, dialogs), the ARIA roles that mean the same, class or id names
that say so (cookie, consent, menu, sidebar, share, ...), and blocks that are mostly links. When a
page marks its main content (`main`, `article`), that is what is read.
"""

from __future__ import annotations

import html.parser
import re

# Elements whose content is never page text.
_HIDDEN = frozenset({"script", "style", "noscript", "template", "svg", "head", "iframe", "select", "button"})
# Elements HTML gives for what surrounds the content.
_CHROME = frozenset({"nav", "footer", "aside", "form", "dialog", "menu"})
_ROLES = frozenset(
    {
        "navigation",
        "banner",
        "contentinfo",
        "complementary",
        "dialog",
        "alertdialog",
        "search",
        "menu",
        "menubar",
    }
)
# Class or id words that name boilerplate (matched as whole words of the name: "main-nav", "cookie_bar").
_CHROME_WORDS = frozenset(
    {
        "nav", "navbar", "navigation", "menu", "breadcrumb", "breadcrumbs", "sidebar", "footer",
        "cookie", "cookies", "consent", "gdpr", "banner", "newsletter", "subscribe", "social", "share",
        "sharing", "advert", "advertisement", "ads", "ad", "promo", "popup", "modal", "skip", "masthead",
    }
)  # fmt: skip
# Only containers that are always closed can start a region skipped by its class or id: an
# unclosed <p> or <li> would otherwise hide the rest of the page.
_CLASSED_CONTAINERS = frozenset({"div", "section", "ul", "ol", "table", "span", "a", "header"})
_MAIN = frozenset({"main", "article"})
_VOID = frozenset(
    {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    }
)
_BLOCKS = frozenset(
    {
        "p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section", "article", "main",
        "table", "ul", "ol", "dl", "dt", "dd", "blockquote", "pre", "figcaption", "td", "th", "header",
    }
)  # fmt: skip
_WORD = re.compile(r"[a-z0-9]+")
# Lines that are boilerplate by what they say, whatever element holds them.
_COOKIE_LINE = re.compile(r"\bcookies?\b.*\b(accept|consent|agree|privacy|settings)\b", re.I | re.S)
_LEGAL_LINE = re.compile(r"^\s*(©|\(c\)|copyright\b)|all rights reserved", re.I)
MAIN_MIN_CHARS = 40  # a main element with less text than this is a stub: read the whole body


def page_text(markup: str) -> tuple[str, str]:
    """(title, readable text) of an HTML page: one line per block, boilerplate dropped."""
    reader = _PageReader()
    reader.feed(markup)
    reader.close()
    reader.end_block()
    main = _joined(reader.main_lines)
    text = main if len(main) >= MAIN_MIN_CHARS else _joined(reader.lines)
    return " ".join("".join(reader.title).split()), text


def _joined(lines: list[str]) -> str:
    return "\n".join(line for line in lines if not _COOKIE_LINE.search(line) and not _LEGAL_LINE.search(line))


def _is_chrome(tag: str, attrs: list[tuple[str, str | None]]) -> bool:
    if tag in _CHROME:
        return True
    found = {name: (value or "").lower() for name, value in attrs}
    if found.get("role") in _ROLES or "hidden" in found or found.get("aria-hidden") == "true":
        return True
    if re.search(r"display\s*:\s*none", found.get("style", "")):
        return True
    if tag not in _CLASSED_CONTAINERS:
        return False
    names = f"{found.get('class', '')} {found.get('id', '')}"
    return any(word in _CHROME_WORDS for word in _WORD.findall(names))


class _PageReader(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: list[str] = []
        self.lines: list[str] = []  # every readable block
        self.main_lines: list[str] = []  # those inside main/article
        self._block: list[str] = []
        self._block_link_chars = 0
        self._block_links = 0
        self._skipping: list[str] = []  # the open elements of the region being skipped
        self._in_title = False
        self._in_link = False
        self._main_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
            return
        if self._skipping:
            if tag == self._skipping[-1] and tag not in _VOID:  # the same element nested in it
                self._skipping.append(tag)
            return
        # A page's header outside its main content is its masthead; an article's own is content.
        masthead = tag == "header" and self._main_depth == 0
        if tag in _HIDDEN or masthead or _is_chrome(tag, attrs):
            if tag not in _VOID:
                self.end_block()
                self._skipping.append(tag)
            return
        if tag in _MAIN:
            self._main_depth += 1
        if tag in _BLOCKS:
            self.end_block()
        elif tag == "a":
            self._in_link = True
            self._block_links += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
            return
        if self._skipping:
            if tag == self._skipping[-1]:
                self._skipping.pop()
            return
        if tag in _BLOCKS:
            self.end_block()
        if tag in _MAIN and self._main_depth:
            self.end_block()
            self._main_depth -= 1
        elif tag == "a":
            self._in_link = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._skipping:
            self._block.append(data)
            if self._in_link:
                self._block_link_chars += len(data.strip())

    def end_block(self) -> None:
        """Close the block being read: kept as a line unless it is empty or mostly links (a menu)."""
        line = " ".join("".join(self._block).split())
        mostly_links = self._block_links >= 3 and self._block_link_chars >= 0.6 * len(line)
        if line and not mostly_links:
            self.lines.append(line)
            if self._main_depth:
                self.main_lines.append(line)
        self._block = []
        self._block_link_chars = 0
        self._block_links = 0
