"""Links written without a scheme, for the hint `waystation turn` prints before it runs.

A turn offers its network tools only when the prompt holds an http(s) URL (the contract's
`tool_choice` rule), so "summarise example.com/news" answers without fetching anything. Saying so
up front saves a confusing answer; but a hint on every "e.g.", "3.5" or "notes.txt" would be
noise, so only what really reads as a web address counts: a dotted host ending in a well-known
top-level domain followed by a path, or a host starting with `www.`.
"""

from __future__ import annotations

import re

# Well-known top-level domains. Deliberately not every one: country codes that are also common
# file extensions (.py, .sh, .md, .pl, .so, .ps, .ml, .hs, .mk, .in for templates) are left out,
# so a file name followed by a slash is not mistaken for a site.
_GENERIC_TLDS = (
    "com org net edu gov mil int info biz io ai dev app co me tv xyz tech site online blog"
    " news cloud page wiki store shop ly gg fm to rs"
)
_COUNTRY_TLDS = (
    "uk de fr jp cn ru nl it es ca au us br ch se no fi dk eu be at nz ie kr tw pt gr cz hu ro ua"
    " za mx ar cl il sg hk vn id th my ph tr is lu"
)
KNOWN_TLDS = frozenset(_GENERIC_TLDS.split()) | frozenset(_COUNTRY_TLDS.split())

# A host of dotted labels (the last one letters only, lower case as people type addresses),
# an optional port, then an optional path.
_ADDRESS = re.compile(
    r"(?P<host>(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+(?P<tld>[a-z]{2,63}))(?::\d{1,5})?(?P<path>/\S*)?",
    re.IGNORECASE,
)
_OPENING = "([{<'\"`"
_CLOSING = ")]}>'\"`.,;:!?"


def schemeless_links(text: str) -> list[str]:
    """The web addresses in `text` that lack `http://` or `https://`, each once, in order."""
    found: list[str] = []
    for word in text.split():
        candidate = word.lstrip(_OPENING).rstrip(_CLOSING)
        if "://" in word or "@" in candidate or not _looks_like_an_address(candidate):
            continue
        if candidate not in found:
            found.append(candidate)
    return found


def _looks_like_an_address(candidate: str) -> bool:
    match = _ADDRESS.fullmatch(candidate)
    if match is None:
        return False
    tld = match["tld"]
    if tld != tld.lower() or tld not in KNOWN_TLDS:  # "ASP.NET/Core" names a framework
        return False
    return match["path"] is not None or match["host"].lower().startswith("www.")


def hint(link: str) -> str:
    """The one line that says why `link` will not be fetched and how to write it."""
    return f"hint: {link} has no http:// or https://, so it will not be fetched; write https://{link}"
