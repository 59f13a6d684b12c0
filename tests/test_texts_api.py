"""On-screen text through the HTTP API (level ``texts``) on a live server over a real clip with "GATE 7 CLOSED"
drawn in and indexed with the bundled OCR models (the ``text_db`` fixture): the hit carries the text read, its
span, its normalised box on its thumbnail; filters apply; an image, a re-ranker, object filters and a database
without a ``texts`` table are clear 400s."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest

from pipeline.search.searcher import Searcher
from pipeline.serve.app import create_app
from pipeline.store import schema as S
from pipeline.store.db import Store
from tests.helpers import AUTH, GATE, TOKEN, running, tiny_config

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def live(text_db) -> Iterator[str]:
    cfg, _ = text_db
    with running(create_app(cfg, token=TOKEN, searcher=Searcher(cfg.db.path, cfg))) as url:
        yield url


def _search(url: str, **params) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.get(f"{url}/api/search", params={"level": "texts", **params}, headers=AUTH, timeout=120)


def test_a_text_hit_carries_its_text_span_box_and_thumbnail(live, text_db) -> None:
    cfg, _ = text_db
    assert httpx.get(f"{live}/api/info", headers=AUTH, timeout=60).json()["texts"] is True
    res = _search(live, text="gate 7 closed", k=5)
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["level"] == "texts" and body["count"] == len(body["results"]) >= 1
    top = body["results"][0]
    expected = Searcher(cfg.db.path, cfg).texts_searcher().search("gate 7 closed", k=5)  # hybrid, the default
    assert body["mode"] == "hybrid"
    assert [r["text_id"] for r in body["results"]] == [h.text_id for h in expected]
    assert top["id"] == top["text_id"] and top["level"] == "texts"
    assert "GATE" in top["text"].upper() and "CLOSED" in top["text"].upper()
    assert top["start_s"] <= 3.0 <= top["end_s"] and GATE.start - 1 <= top["start_s"] and top["end_s"] <= GATE.end + 1
    x1, y1, x2, y2 = top["box"]
    assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
    # Drawn with its top-left corner at (0.08, 0.72) of the frame: the box read is there, not anywhere else.
    assert abs(x1 - GATE.x) < 0.04 and abs(y1 - GATE.y) < 0.04 and x2 - x1 > 0.2 and y2 - y1 < 0.15
    assert top["start_s"] <= top["best_t"] <= top["end_s"]
    thumb = httpx.get(f"{live}/api/thumbnails/{top['thumb_id']}", headers=AUTH, timeout=60)
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"  # the frame the box was read on

    fuzzy = _search(live, text="GATE 7 CL0SED").json()["results"]  # one OCR-style error in the query
    assert fuzzy and fuzzy[0]["text_id"] == top["text_id"]
    posted = httpx.post(f"{live}/api/search", json={"text": "closed", "level": "texts"}, headers=AUTH, timeout=60)
    assert posted.status_code == 200 and posted.json()["results"][0]["text_id"] == top["text_id"]


def test_filters_that_apply_to_text(live) -> None:
    gate = _search(live, text="gate closed").json()["results"][0]
    post = {"text": "gate closed", "level": "texts"}

    def ids(filters: dict) -> list[str]:
        res = httpx.post(f"{live}/api/search", json={**post, "filters": filters}, headers=AUTH, timeout=60)
        assert res.status_code == 200, res.text
        return [r["text_id"] for r in res.json()["results"]]

    assert gate["text_id"] in ids({"time_range": [2.5, 3.0]})
    assert gate["text_id"] not in ids({"time_range": [5.5, 6.0]})  # the text left the screen at 4.6 s
    assert gate["text_id"] in ids({"video_ids": [gate["video_id"]], "path_glob": "*/gate.mp4"})
    assert ids({"path_glob": "*/other.mp4"}) == []
    assert ids({"min_score": 1.01}) == []
    got = _search(live, text="gate closed", time_range=[2.5, 3.0]).json()["results"]  # the GET form
    assert got and got[0]["text_id"] == gate["text_id"]


def test_what_does_not_apply_to_text_is_a_clear_400(live) -> None:
    res = _search(live, text="gate", classes=["person"])
    assert res.status_code == 400 and "do not apply" in res.json()["detail"]
    res = _search(live, text="gate", rerank="attention")
    assert res.status_code == 400 and "re-rankers" in res.json()["detail"]
    res = _search(live, text="gate", mode="words")
    assert res.status_code in (400, 422)
    res = _search(live, text="   ")
    assert res.status_code == 400 and "empty" in res.json()["detail"]
    jpeg = b"\xff\xd8\xff\xe0 not decoded: refused before any decoding"
    res = httpx.post(
        f"{live}/api/search", data={"level": "texts"}, files={"image": ("q.jpg", jpeg)}, headers=AUTH, timeout=60
    )
    assert res.status_code == 400 and "searched by words and meaning" in res.json()["detail"]
    surrogate = rb'{"text": "gate \ud800", "level": "texts"}'  # a lone surrogate, as a JSON escape
    res = httpx.post(f"{live}/api/search", content=surrogate, headers={**AUTH, **JSON}, timeout=60)
    assert res.status_code == 400 and "Unicode" in res.json()["detail"]
    res = _search(live, text="gate", k=0)
    assert res.status_code == 400


def test_a_database_without_a_texts_table_is_a_clear_400(text_db, tmp_path) -> None:
    cfg, _ = text_db
    old = tmp_path / "old_db"
    shutil.copytree(cfg.db.path, old)  # as a database indexed before on-screen text was read
    Store(str(old)).db.drop_table(S.TEXTS)
    cfg_old = tiny_config(old)
    with running(create_app(cfg_old, token=TOKEN, searcher=Searcher(str(old), cfg_old))) as url:
        assert httpx.get(f"{url}/api/info", headers=AUTH, timeout=60).json()["texts"] is False
        res = _search(url, text="gate")
        assert res.status_code == 400 and "no on-screen text" in res.json()["detail"]
        res = httpx.post(f"{url}/api/search", json={"text": "gate", "level": "texts"}, headers=AUTH, timeout=60)
        assert res.status_code == 400 and "ocr.engine=rapidocr" in res.json()["detail"]


def test_on_screen_text_is_found_by_meaning_where_no_word_matches(live) -> None:
    query = "entrance number seven is shut"  # no word of it is on screen
    assert _search(live, text=query, mode="text").json()["count"] == 0
    for mode in ("vector", "hybrid"):
        body = _search(live, text=query, mode=mode, k=3).json()
        assert body["mode"] == mode and body["count"] >= 1
        top = body["results"][0]
        assert "GATE" in top["text"].upper() and 0.3 < top["score"] <= 1.0
