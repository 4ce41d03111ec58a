"""A fetched page as the text a reader reads (station/turns/page_text.py): the content kept,
navigation, banners, cookie notices, footers and link lists dropped, however the page marks them."""

from __future__ import annotations

import pytest
from grounded_page_set import pages

from waystation.station.turns.page_text import page_text

FACT = "A single adult ticket costs 4.50 EUR."


def _page(body: str, title: str = "Fares") -> str:
    return f"<!doctype html><html><head><title>{title}</title></head><body>{body}</body></html>"


@pytest.mark.parametrize(
    "boilerplate",
    [
        "<nav><a href='/'>Home</a> <a href='/shop'>Shop</a></nav>",
        "<header><div>Coastline Portal</div></header>",
        "<footer>Contact us at the office</footer>",
        "<aside>Popular this week: ten walks</aside>",
        "<form><input name=q> Search the site</form>",
        "<div role='navigation'>Home Shop</div>",
        "<div role='contentinfo'>Company info</div>",
        "<div id='cookie-consent'>We bake cookies too</div>",
        "<div class='site-footer'>Head office in Lyon</div>",
        "<div class='main-menu'><ul><li>Home</li><li>Shop</li></ul></div>",
        "<div class='cookie_bar'><div>nested</div>still the banner</div>",
        "<ul class='social-links'><li>Facebook</li></ul>",
        "<div aria-hidden='true'>hidden text</div>",
        "<div style='display: none'>invisible</div>",
        "<p>We use cookies to make this site work. Accept all?</p>",
        "<p>© 2026 Coastline Media. All rights reserved.</p>",
        "<p>Copyright Coastline</p>",
        "<div><a href='/'>Home</a> | <a href='/a'>About</a> | <a href='/c'>Contact</a></div>",
        "<script>var fact = 'not this';</script><style>p { color: red }</style>",
    ],
)
def test_boilerplate_is_dropped_and_the_content_kept(boilerplate: str) -> None:
    title, text = page_text(_page(f"{boilerplate}<div><p>{FACT}</p></div>{boilerplate}"))
    assert title == "Fares"
    assert text == FACT


def test_main_content_is_read_when_the_page_marks_it() -> None:
    body = f"<div>Logo and a slogan</div><main><h1>Fares</h1><p>{FACT}</p><p>Children go free.</p></main>"
    assert page_text(_page(body))[1] == f"Fares\n{FACT}\nChildren go free."


def test_an_article_header_is_content_but_a_page_masthead_is_not() -> None:
    body = (
        "<header>Coastline Portal</header><article><header><h1>Ferry fares 2026</h1></header>"
        f"<p>{FACT} The ferry leaves every twenty minutes from the old town pier.</p></article>"
    )
    assert page_text(_page(body))[1].startswith("Ferry fares 2026\n")


def test_a_stub_main_does_not_hide_the_page() -> None:
    body = f"<main>Loading…</main><div><p>{FACT}</p></div>"
    assert FACT in page_text(_page(body))[1]


def test_unclosed_paragraphs_and_void_elements_do_not_swallow_the_page() -> None:
    body = f"<p class='ad'>Buy now<br><img src=x><p>{FACT}<hr><p>Children go free."
    text = page_text(_page(body))[1]
    assert FACT in text and "Children go free." in text


def test_a_sentence_that_mentions_links_or_cookies_in_passing_is_kept() -> None:
    kept = "Our bakery sells cookies and bread every day from 7."
    body = f"<p>{kept}</p><p>See <a href='/map'>the map</a> for the way.</p>"
    assert page_text(_page(body))[1] == f"{kept}\nSee the map for the way."


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.slug)
def test_every_page_of_the_set_keeps_its_fact_and_loses_its_boilerplate(page: object) -> None:
    from grounded_page_set import Page

    assert isinstance(page, Page)
    title, text = page_text(page.html())
    assert title == page.title
    assert any(a.lower() in text.lower() for a in page.answers)
    for chrome in ("cookie", "All rights reserved", "Facebook", "newsletter", "Popular this week"):
        assert chrome not in text, chrome
