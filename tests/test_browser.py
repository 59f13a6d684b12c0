"""The results page in a real browser: Debian's headless Chromium driven by Playwright (never a downloaded
browser) against a live server over the indexed sample videos. Sign in, search, see thumbnails with boxes,
click a hit and check the player seeked to the hit's start (which needs HTTP Range); search by an image."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.search.searcher import Searcher
from pipeline.serve.app import create_app
from pipeline.store import schema as S
from tests.helpers import TOKEN, running, wait_until

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(indexed_db):
    cfg, _ = indexed_db
    searcher = Searcher(cfg.db.path, cfg)
    with running(create_app(cfg, token=TOKEN, searcher=searcher)) as url:
        yield url, searcher


def test_search_click_and_play_from_the_span_start(browser, site, tmp_path: Path) -> None:
    url, searcher = site
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    try:
        signin = page.goto(f"{url}/")
        assert page.url.endswith("/login")  # the token protects the page too
        assert signin is not None and "script-src 'self'" in signin.headers["content-security-policy"]
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(f"{url}/")
        page.wait_for_selector("#status >> text=3 videos indexed")

        page.click("#filters summary")
        page.fill("#path_glob", "*/flower.webm")
        page.fill("#text", "a flower moving in the wind")
        page.click("#go")
        page.wait_for_selector(".result")
        cards = page.locator(".result")
        expected = searcher.search(text="a flower moving in the wind", k=12, filters={"path_glob": "*/flower.webm"})
        assert cards.count() == len(expected) == 2
        assert [float(cards.nth(i).get_attribute("data-start")) for i in range(2)] == [r.start_s for r in expected]
        assert page.locator(".result .name").all_inner_texts() == ["flower.webm", "flower.webm"]
        captions = [r.caption for r in expected]  # the tiny config captions every segment (random tiny BLIP)
        assert all(captions) and page.locator(".result .caption").all_inner_texts() == captions
        assert float(page.locator(".result .score").first.inner_text()) == pytest.approx(expected[0].score, abs=6e-4)
        wait_until(
            page, "[...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)"
        )  # thumbnails load through the session cookie
        later = next(i for i, r in enumerate(expected) if r.start_s > 0)
        start = expected[later].start_s
        page.evaluate(
            """() => {
                const v = document.getElementById('video');
                window.seeks = [];
                v.addEventListener('seeked', () => window.seeks.push(v.currentTime));
            }"""
        )
        cards.nth(later).click()
        wait_until(page, "window.seeks.length > 0")
        seeked = page.evaluate("window.seeks[0]")
        assert seeked == pytest.approx(start, abs=0.05)
        wait_until(page, "document.getElementById('video').readyState >= 2")
        page.evaluate("document.getElementById('video').pause()")
        now = page.evaluate("document.getElementById('video').currentTime")
        assert start - 0.05 <= now < start + 2.0  # at the span start (plus whatever played since)
        assert page.evaluate("document.getElementById('video').currentSrc").endswith(
            f"/media/{expected[later].video_id}"
        )
        page.screenshot(path=str(tmp_path / "results.png"), full_page=True)

        # The detector's boxes are drawn on a card: the woman signing in book.mkv (the flower shows no object the
        # trained detector knows).
        page.fill("#path_glob", "*/book.mkv")
        page.click("#go")
        wait_until(page, "document.querySelector('.result .name')?.textContent === 'book.mkv'")
        boxed = searcher.search(text="a flower moving in the wind", k=12, filters={"path_glob": "*/book.mkv"})
        boxes = page.locator(".result").first.locator(".box")
        assert boxes.count() == min(6, len(boxed[0].boxes)) > 0
        style = boxes.first.get_attribute("style") or ""
        assert "left:" in style and "%" in style

        # Search by an example image: a frame's own thumbnail finds that frame first.
        frame_id = searcher.store.rows(S.FRAMES, None, ["frame_id"]).column("frame_id")[3].as_py()
        query = tmp_path / "query.jpg"
        query.write_bytes(searcher.thumbnail(frame_id) or b"")
        page.fill("#path_glob", "")
        page.select_option("#level", "frames")
        page.set_input_files("#image", str(query))
        assert page.locator("#text").is_disabled()
        page.click("#go")
        wait_until(
            page,
            "document.querySelector('#message').textContent.includes('result')"
            " && document.querySelectorAll('.result').length > 0",
        )
        first = page.locator(".result").first
        hit = searcher.search(image=query.read_bytes(), k=12, level="frames")[0]
        assert hit.id == frame_id
        assert float(first.get_attribute("data-start")) == hit.start_s
        assert first.get_attribute("data-video-id") == hit.video_id
        page.screenshot(path=str(tmp_path / "image-query.png"), full_page=True)
    finally:
        page.close()


def test_errors_show_on_the_page(browser, site) -> None:
    url, _ = site
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{url}/login")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(f"{url}/")
        page.wait_for_selector("#status >> text=indexed")
        page.click("#go")  # empty query
        page.wait_for_selector(".message.error")
        assert "empty" in page.inner_text("#message")
        assert page.locator(".result").count() == 0
    finally:
        context.close()
