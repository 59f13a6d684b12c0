"""On-screen text in the page, in headless Chromium against a live server over a real clip with "GATE 7 CLOSED"
drawn in and indexed with the bundled OCR models (the ``text_db`` fixture): choose the on-screen-text level,
see the text read with the query's words marked and its box highlighted where the text is on the thumbnail,
click the hit and check the player seeked to the span's start."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.search.searcher import Searcher
from pipeline.serve.app import create_app
from tests.helpers import TOKEN, running, wait_until

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(text_db):
    cfg, _ = text_db
    with running(create_app(cfg, token=TOKEN, searcher=Searcher(cfg.db.path, cfg))) as url:
        yield url


def test_text_hits_show_their_box_and_play_from_the_span(browser, site, text_db, tmp_path: Path) -> None:
    cfg, _ = text_db
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    try:
        page.goto(f"{site}/login")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(f"{site}/")
        page.wait_for_selector("#status >> text=1 video indexed")
        assert page.locator('#level option[value="texts"]').is_enabled()  # /api/info says text is searchable

        page.select_option("#level", "texts")
        assert page.locator("#rerank").is_disabled() and page.locator("#image").is_disabled()
        assert page.locator("#classes").is_disabled()  # object filters do not apply to text
        assert not page.locator("#status .warn").is_visible()  # the OCR models are trained, unlike the tiny encoder
        page.fill("#text", "gate closed")
        page.click("#go")
        page.wait_for_selector(".result")
        expected = Searcher(cfg.db.path, cfg).texts_searcher().search("gate closed", k=12)  # hybrid, the default
        cards = page.locator(".result")
        assert cards.count() == len(expected) >= 1
        hit = expected[0]
        first = cards.first
        assert first.locator(".ocr-text").inner_text() == hit.text
        assert [m.upper() for m in first.locator(".ocr-text mark").all_inner_texts()] == ["GATE", "CLOSED"]
        assert float(first.get_attribute("data-start")) == hit.start_s
        assert float(first.get_attribute("data-end")) == hit.end_s
        assert first.locator(".span-badge").inner_text() == "0:01.5 – 0:04.5"  # on screen from 1.4 s to 4.6 s

        # The highlighted box sits on the thumbnail where the text was read (the image is not letterboxed).
        wait_until(page, "[...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth)")
        img = first.locator("img").bounding_box()
        box = first.locator(".box.text-box").bounding_box()
        assert img is not None and box is not None
        x1, y1, x2, y2 = hit.box
        assert box["x"] == pytest.approx(img["x"] + x1 * img["width"], abs=2)
        assert box["y"] == pytest.approx(img["y"] + y1 * img["height"], abs=2)
        assert box["width"] == pytest.approx((x2 - x1) * img["width"], abs=2)
        assert box["height"] == pytest.approx((y2 - y1) * img["height"], abs=2)
        natural = page.evaluate(
            "(() => { const i = document.querySelector('.result img'); return i.naturalWidth / i.naturalHeight; })()"
        )
        assert img["width"] / img["height"] == pytest.approx(natural, rel=0.02)

        page.evaluate(
            """() => {
                const v = document.getElementById('video');
                window.seeks = [];
                v.addEventListener('seeked', () => window.seeks.push(v.currentTime));
            }"""
        )
        first.click()
        wait_until(page, "window.seeks.length > 0")
        assert page.evaluate("window.seeks[0]") == pytest.approx(hit.start_s, abs=0.05)
        assert page.evaluate("document.getElementById('video').currentSrc").endswith(f"/media/{hit.video_id}")
        assert hit.text in page.inner_text("#now")
        page.screenshot(path=str(tmp_path / "texts.png"), full_page=True)

        # Back to a vector level: what text search turned off is on again.
        page.select_option("#level", "segments")
        assert page.locator("#rerank").is_enabled() and page.locator("#image").is_enabled()
        assert page.locator("#status .warn").is_visible()
    finally:
        page.close()
