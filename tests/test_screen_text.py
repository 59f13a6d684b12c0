"""On-screen text in segment search: the assembler gathers the text read on a segment's frames into
``segments.screen_text``; ``text`` mode finds a segment by the words on its screen (with an OCR error in them,
through the n-gram index and the same re-scoring as the ``texts`` level) next to its caption, and ``hybrid`` fuses
the vector, caption and screen rankings by reciprocal rank, checked against an independent computation. Synthetic
rows of the real schemas, written through ``Store.commit``; the real OCR pipeline is in ``test_ocr_pipeline.py``."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.assemble import MAX_SCREEN_LINES, SegmentConfig, assemble_video
from pipeline.config import MaintenanceConfig
from pipeline.errors import SearchError
from pipeline.search.searcher import Searcher
from pipeline.serve.app import create_app
from pipeline.store import schema as S
from pipeline.store.db import Store
from pipeline.store.fts import CAPTION_FTS, SCREEN_FTS
from pipeline.store.maintenance import maintain, needs_maintenance
from tests.helpers import TINY_DIM, content, running, tables_of, tiny_config, video_row
from tests.test_assembly import frames

PER_VIDEO = 6
RRF_K = 60
#: (captions, screen texts) per video; "vcap" has captions only, "vscreen" on-screen text only, "vboth" both.
VIDEOS: dict[str, tuple[list[str | None], list[str | None]]] = {
    "vcap": (
        [
            "a man opens the gate",
            "a dog running on the beach",
            "a woman riding a bike",
            "a train arrives at the platform",
            "a closed shop at night",
            "children playing in a park",
        ],
        [None] * PER_VIDEO,
    ),
    "vscreen": (
        [None] * PER_VIDEO,
        ["GATE 7 CLOSED", "EXIT 12\nPLATFORM 9", None, "SALE 50% OFF", "GATE 3 OPEN", "NO ENTRY"],
    ),
    "vboth": (
        ["a crowd at the station", "a man reading a sign", None, "a dog sleeping", "a bus on the street", None],
        ["DEPARTURES", "GATE 7 CLOSED TODAY", "PLATFORM 4", None, "BUS 42 CITY CENTRE", "GATE 7 CL0SED"],
    ),
}


def commit_video(store: Store, vid: str, seed: int) -> None:
    captions, screens = VIDEOS[vid]
    group = content(vid, [4.0 * j for j in range(PER_VIDEO)], seed=seed, dim=TINY_DIM)
    segs = group[S.SEGMENTS]
    for name, values in (("caption", captions), ("screen_text", screens)):
        segs = segs.set_column(segs.schema.get_field_index(name), name, pa.array(values, pa.string()))
    group[S.SEGMENTS] = segs
    row = video_row(vid, f"/archive/{vid}.mp4")
    store.begin([row])
    store.commit([row], tables_of(group))


def build(path: Any, videos: list[str]) -> tuple[Any, Searcher, dict[str, Any]]:
    store = Store(str(path), TINY_DIM)
    for seed, vid in enumerate(videos):
        commit_video(store, vid, seed)
    report = maintain(store, MaintenanceConfig())
    cfg = tiny_config(path)
    return cfg, Searcher(store, cfg), report


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> tuple[Any, Searcher]:
    cfg, searcher, report = build(tmp_path_factory.mktemp("screen") / "db", list(VIDEOS))
    assert "FTS index (n-grams) on screen_text" in report["tables"][S.SEGMENTS]["actions"]
    return cfg, searcher


def screen_of(searcher: Searcher) -> dict[str, str | None]:
    rows = searcher.store.rows(S.SEGMENTS, columns=["segment_id", "screen_text"]).to_pylist()
    return {r["segment_id"]: r["screen_text"] for r in rows}


def test_the_assembler_gathers_the_text_read_on_each_segments_frames() -> None:
    rows = frames()
    n = len(rows["t"])
    read: list[list[str]] = [[] for _ in range(n)]
    read[1], read[2], read[3] = ["GATE 7  CLOSED"], ["GATE 7 CLOSED", "EXIT"], ["GATE 7 CLOSED"]  # window 0-4 s
    read[5] = ["SALE"]  # window 4-8 s
    read[9] = [f"TICKER {i}" for i in range(MAX_SCREEN_LINES + 10)]  # window 8-12 s: a long scroll stays bounded
    rows["ocr_text"] = np.empty(n, dtype=object)
    rows["ocr_text"][:] = read
    rows["ocr_boxes"] = np.empty(n, dtype=object)
    rows["ocr_boxes"][:] = [np.tile([[0.1, 0.1, 0.5, 0.2]], (len(r), 1)).astype(np.float32) for r in read]
    rows["ocr_conf"] = np.empty(n, dtype=object)
    rows["ocr_conf"][:] = [np.full(len(r), 0.9, np.float32) for r in read]
    out = assemble_video("v", rows, SegmentConfig(window_s=4.0), None, 1.0)
    segs = sorted(out[S.SEGMENTS], key=lambda r: r["start_s"])
    # whitespace collapsed, each distinct line once, in order of first appearance; no text: null
    assert segs[0]["screen_text"] == "GATE 7 CLOSED\nEXIT"
    assert segs[1]["screen_text"] == "SALE"
    assert segs[2]["screen_text"].splitlines() == [f"TICKER {i}" for i in range(MAX_SCREEN_LINES)]
    assert [s["screen_text"] for s in segs[3:]] == [None] * (len(segs) - 3)
    assert any(" ".join(t["text"].split()) == "GATE 7 CLOSED" for t in out[S.TEXTS])  # the spans are still made
    del rows["ocr_text"], rows["ocr_boxes"], rows["ocr_conf"]  # OCR off: no screen text anywhere
    assert {s["screen_text"] for s in assemble_video("v", rows, SegmentConfig(), None, 1.0)[S.SEGMENTS]} == {None}


def test_a_segment_is_found_by_the_words_on_its_screen(db) -> None:
    _, searcher = db
    screens = screen_of(searcher)
    # Within videos whose captions hold none of the words, only the screen ranking finds something, so the
    # scores are its similarities: exact text 1, the misread "GATE 7 CL0SED" below.
    signs = {"video_ids": ["vscreen", "vboth"]}
    exact = searcher.search(text="gate 7 closed", k=10, filters=signs, mode="text", rerank=None)
    assert exact[0].score == 1.0 and "GATE 7 CLOSED" in (exact[0].screen_text or "")
    full = {sid for sid, text in screens.items() if text and "GATE 7 CLOSED" in text}
    assert {h.id for h in exact if h.score == 1.0} == full and len(full) == 2
    misread = next(sid for sid, text in screens.items() if text == "GATE 7 CL0SED")
    assert misread in {h.id for h in exact if 0.6 <= h.score < 1.0}
    # a query with an OCR-style error of its own still finds the sign, and words split differently too
    assert searcher.search(text="GATE 7 CL0SED", k=1, filters=signs, mode="text", rerank=None)[0].id == misread
    assert "EXIT 12" in (searcher.search(text="exit12", k=1, mode="text", rerank=None)[0].screen_text or "")
    # Over every video the caption ranking ("a man opens the gate", "a closed shop ...") joins in: the two
    # rankings are fused, so each one's best segment comes first.
    fused = searcher.search(text="gate 7 closed", k=10, mode="text", rerank=None)
    assert {fused[0].id, fused[1].id} & full and fused[0].caption != fused[1].caption
    assert {h.video_id for h in fused} == {"vcap", "vscreen", "vboth"}
    # the screen text shows on vector hits as well
    vec = searcher.search(text="anything", k=50, mode="vector", rerank=None)
    assert {h.id: h.screen_text for h in vec} == {h.id: screens[h.id] for h in vec}


def test_a_sentence_sharing_trigrams_with_a_sign_is_not_a_screen_hit(db) -> None:
    """Captions are matched by words; the screen leg keeps only (nearly) written text, so the caption sentence
    "a closed shop at night" finds its caption, not every sign with "CLOSED" or "SHOP"-like trigrams."""
    _, searcher = db
    screens = screen_of(searcher)
    hits = searcher.search(text="a closed shop at night", k=20, mode="text", rerank=None)
    assert hits[0].caption == "a closed shop at night" and hits[0].score == 1.0
    assert not [h for h in hits if screens[h.id] and not h.caption]  # no screen-only segment came back
    assert searcher.search(text="gateway", k=20, mode="text", rerank=None) == []


@pytest.mark.parametrize(
    "filters", [{"video_ids": ["vboth"]}, {"time_range": [3.0, 9.0]}, {"path_glob": "*/vscreen.mp4"}]
)
def test_filters_hold_for_screen_hits(db, filters) -> None:
    _, searcher = db
    hits = searcher.search(text="gate 7 closed", k=50, filters=filters, mode="text", rerank=None)
    assert hits
    for h in hits:
        assert "video_ids" not in filters or h.video_id in filters["video_ids"]
        assert "path_glob" not in filters or h.video_id == "vscreen"
        if "time_range" in filters:
            assert h.end_s >= filters["time_range"][0] and h.start_s <= filters["time_range"][1]


def test_text_and_hybrid_fuse_caption_and_screen_rankings_as_an_independent_rrf(tmp_path) -> None:
    """The caption-only and screen-only rankings are taken from the same database with the other index dropped;
    the fused rankings must equal an RRF of them computed here (vector first, then caption, then screen)."""
    cfg, searcher, _ = build(tmp_path / "db", list(VIDEOS))
    table = searcher.store.table(S.SEGMENTS)
    query, k = "gate", 8
    depth = k * cfg.search.overfetch

    def ids(mode: str, n: int) -> list[str]:
        return [h.id for h in searcher.search(text=query, k=n, mode=mode, rerank=None)]  # type: ignore[arg-type]

    both_text, both_hybrid = ids("text", depth), ids("hybrid", k)
    vector = ids("vector", depth)
    table.drop_index(SCREEN_FTS.name)
    caption = ids("text", depth)
    maintain(searcher.store, MaintenanceConfig())  # rebuilds the screen index
    table.drop_index(CAPTION_FTS.name)
    screen = ids("text", depth)
    assert caption and screen and set(caption) != set(screen), "both word rankings must matter"

    def rrf(rankings: list[list[str]]) -> list[str]:
        fused: dict[str, float] = {}
        for ranking in rankings:
            for i, seg in enumerate(ranking):
                fused[seg] = fused.get(seg, 0.0) + 1.0 / (RRF_K + i + 1)
        order = list(dict.fromkeys(sum(rankings, [])))
        return sorted(fused, key=lambda seg: (-fused[seg], order.index(seg)))

    assert both_text == rrf([caption, screen])[:depth]
    assert both_hybrid == rrf([vector, caption, screen])[:k]


def test_maintain_builds_the_screen_index_only_once_there_is_screen_text(tmp_path) -> None:
    cfg, searcher, report = build(tmp_path / "db", ["vcap"])
    assert not any("screen_text" in a for a in report["tables"][S.SEGMENTS]["actions"])
    names = {ix.name for ix in searcher.store.table(S.SEGMENTS).list_indices()}
    assert CAPTION_FTS.name in names and SCREEN_FTS.name not in names
    commit_video(searcher.store, "vscreen", 1)
    assert needs_maintenance(searcher.store, MaintenanceConfig(scalar_index_min_rows=10**9))
    # until maintain builds the screen index, words are searched in captions only, as before
    hits = searcher.search(text="gate 7 closed", k=10, mode="text", rerank=None)
    assert hits and {h.video_id for h in hits} == {"vcap"} and all(h.caption for h in hits)
    report = maintain(searcher.store, MaintenanceConfig())
    assert "FTS index (n-grams) on screen_text" in report["tables"][S.SEGMENTS]["actions"]
    hits = searcher.search(text="gate 7 closed", k=2, mode="text", rerank=None)  # each ranking's best
    assert {(h.video_id, h.screen_text) for h in hits} == {("vcap", None), ("vscreen", "GATE 7 CLOSED")}


def test_http_returns_the_screen_text_of_a_hit(db) -> None:
    cfg, searcher = db
    with running(create_app(cfg, token=None, searcher=searcher)) as url:
        params = {"text": "exit 12", "mode": "text", "rerank": "none", "k": 3}
        body = httpx.get(f"{url}/api/search", params=params, timeout=60).json()
    assert body["results"][0]["screen_text"] == "EXIT 12\nPLATFORM 9"


@pytest.mark.browser
def test_page_cards_show_the_screen_text(db, browser) -> None:
    cfg, searcher = db
    want = searcher.search(text="platform", k=6, mode="text")
    assert any(r.screen_text for r in want) and any(not r.screen_text for r in want)
    with running(create_app(cfg, token=None, searcher=searcher)) as url:
        page = browser.new_page()
        page.goto(f"{url}/")
        page.wait_for_selector("#status >> text=indexed")
        page.select_option("#mode", "text")
        page.fill("#text", "platform")
        page.click("#go")
        page.wait_for_selector("#message >> text=text mode")
        shown = page.locator(".result").evaluate_all(
            "cs => cs.map(c => { const s = c.querySelector('.screen-text'); return s ? s.textContent : null; })"
        )
        page.close()
    assert shown == [" · ".join(r.screen_text.splitlines()) if r.screen_text else None for r in want]


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40) | st.sampled_from(["*:*", "((((", "GATE\x00", "'", "\\", "a", "7", "\u202e gate"]))
def test_any_query_reaches_the_screen_index_or_gets_a_clear_refusal(db, text) -> None:  # type: ignore[no-untyped-def]
    _, searcher = db
    for mode in ("text", "hybrid"):
        try:
            hits = searcher.search(text=text, k=5, mode=mode, rerank=None)  # type: ignore[arg-type]
        except SearchError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:
            assert len(hits) <= 5 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
