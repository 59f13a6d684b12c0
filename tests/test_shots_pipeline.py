"""Shots through the whole pipeline: a composite of three real clips joined by hard cuts at 2 s and 4 s is
indexed once on Ray with the content detector. Segments follow the cuts (none crosses one), the tracker restarts
at every cut (no track spans two shots), frames and segments store their shot, a segment hit returns its shot's
span, the API lists the shots, and the page marks the cuts on the player's timeline (headless Chromium)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from pipeline.evaluation.shots import ShotClip, ShotManifest, build_clip
from pipeline.evaluation.shots_pipeline import span_tious
from pipeline.search.searcher import Searcher
from pipeline.serve.app import create_app
from pipeline.store import schema as S
from pipeline.store.db import Store
from tests.helpers import AUTH, TOKEN, running, tiny_config, wait_until

PARTS = ["mmaction2/test.mp4", "mmaction2/demo.mp4", "decord/flipping_a_pancake.mkv"]
CUTS = [2.0, 4.0]
TOL = 0.12  # 3 frames at 25 fps: the manifest's tolerance for a hard cut
SHOTS = [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]
SPEC = {"id": "hard", "category": "hard", "parts": [{"video": p, "duration": 2} for p in PARTS]}


@pytest.fixture(scope="module")
def composite(tmp_path_factory, testdata) -> Path:
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg command-line tool is needed to build composites (.ci/run installs it)")
    m = ShotManifest.model_validate({"fps": 25, "size": [320, 180], "detectors": ["content"], "clips": [SPEC]})
    work = tmp_path_factory.mktemp("shot_pipeline")
    folder = work / "videos"
    folder.mkdir()
    shutil.copy(build_clip(m.clips[0], m, testdata, work / "clips"), folder / "hard.mp4")
    return folder


@pytest.fixture(scope="module")
def indexed(composite, ray_session, tmp_path_factory):  # type: ignore[no-untyped-def]
    from pipeline.index.runner import run_index

    cfg = tiny_config(tmp_path_factory.mktemp("shot_db") / "db", "segments.shots=content", "decode.fps=2")
    summary = run_index(cfg, [str(composite)], progress=False)
    assert summary.failed == 0 and summary.indexed == 1, summary.failures
    return cfg


def test_segments_follow_cuts_and_tracks_stay_inside_shots(indexed) -> None:
    store = Store(indexed.db.path)
    segments = sorted((r["start_s"], r["end_s"]) for r in store.rows(S.SEGMENTS).to_pylist())
    # One segment per 2 s shot (each shorter than window_s = 4 s); fixed windows would give [0, 4) and [4, 6).
    assert [round(s, 1) for s, _ in segments] == [0.0, *CUTS], segments
    for start, end in segments:
        assert not any(start < c < end - 1e-6 for c in CUTS), (start, end)
    tracks = store.rows(S.TRACKS).to_pylist()
    assert tracks, "the tiny config's random detector gives boxes, so there are tracks to check"
    for tr in tracks:
        shot = sum(tr["t_first"] >= c - 1e-6 for c in CUTS)
        assert sum(tr["t_last"] >= c - 1e-6 for c in CUTS) == shot, (tr["t_first"], tr["t_last"])
    ids = [tr["track_id"] for tr in tracks]
    assert len(ids) == len(set(ids))  # tracker ids restart per shot; track ids stay unique
    # Frames' boxes name the tracks of their own shot.
    for f in store.rows(S.FRAMES, columns=["t", "boxes"]).to_pylist():
        for b in f["boxes"]:
            if b["track_id"]:
                tr = next(t for t in tracks if t["track_id"] == b["track_id"])
                assert tr["t_first"] - 1e-6 <= f["t"] <= tr["t_last"] + 1e-6


def test_shots_stored_and_returned_by_search_and_api(indexed) -> None:
    store = Store(indexed.db.path)
    for f in store.rows(S.FRAMES, columns=["t", "shot_idx"]).to_pylist():
        assert f["shot_idx"] == sum(f["t"] >= c - TOL for c in CUTS), f
    for s in store.rows(S.SEGMENTS).to_pylist():
        want = SHOTS[s["shot_idx"]]
        assert (s["shot_start_s"], s["shot_end_s"]) == pytest.approx(want, abs=TOL), s
    # A segment hit for a frame's own thumbnail carries the span of that frame's shot.
    searcher = Searcher(indexed.db.path, indexed)
    frame = next(f for f in store.rows(S.FRAMES, columns=["frame_id", "t"]).to_pylist() if 2.4 < f["t"] < 3.6)
    hit = searcher.search(image=searcher.thumbnail(frame["frame_id"]), k=3, level="segments")[0]
    assert hit.shot_idx is not None and (hit.shot_start_s, hit.shot_end_s) == pytest.approx(
        SHOTS[hit.shot_idx], abs=TOL
    )
    assert hit.shot_start_s <= hit.start_s < hit.end_s <= hit.shot_end_s
    assert "shot_start_s" in hit.as_dict()
    with running(create_app(indexed, token=TOKEN, searcher=searcher)) as url:
        body = httpx.get(f"{url}/api/videos/{hit.video_id}/shots", headers=AUTH).json()
        assert body["detected"] and [s["shot_idx"] for s in body["shots"]] == [0, 1, 2]
        assert body["cuts"] == pytest.approx(CUTS, abs=TOL)
        assert httpx.get(f"{url}/api/videos/{hit.video_id}/shots").status_code == 401
        missing = httpx.get(f"{url}/api/videos/00000000-0000-0000-0000-000000000000/shots", headers=AUTH)
        assert missing.status_code == 404


def test_segment_hits_tiou_through_the_pipeline(indexed, composite, tmp_path: Path) -> None:
    """The --pipeline evaluation's scoring on this index: near-duplicate queries at 0..5 s find their shot."""
    clip = ShotClip.model_validate(SPEC)
    scores = span_tious(Searcher(indexed.db.path, indexed), [(clip, str(composite / "hard.mp4"))], tmp_path)
    assert scores["queries"] == 6
    # One segment per 2 s shot here, so a hit in the right shot scores ~1 either way (cuts within 3 frames). The
    # tiny random encoder can send the query at a cut (the new shot's first frame) to the shot before; two such
    # misses still leave 0.67, while spans that were the whole video (0.33) or fixed 4 s windows (0.5) would not.
    assert scores["tIoU shot span"] is not None and scores["tIoU shot span"] >= 0.65, scores
    assert scores["tIoU shot span"] == pytest.approx(scores["tIoU segment"])
    assert scores["hit holds t"] == pytest.approx(scores["tIoU shot span"], abs=0.1), scores


@pytest.mark.browser
def test_player_timeline_marks_the_cuts(indexed, browser, tmp_path: Path) -> None:
    searcher = Searcher(indexed.db.path, indexed)
    with running(create_app(indexed, token=TOKEN, searcher=searcher)) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        try:
            page.goto(f"{url}/login")
            page.fill("input[name=token]", TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url(f"{url}/")
            page.wait_for_selector("#status >> text=1 video indexed")
            page.fill("#text", "a person")
            page.click("#go")
            page.wait_for_selector(".result")
            page.locator(".result").first.click()
            wait_until(page, "!!document.querySelector('#shot-strip:not([hidden]) .shot-cut')")
            wait_until(page, "document.getElementById('video').readyState >= 1")
            marks = page.locator("#shot-strip .shot-cut")
            assert marks.count() == len(CUTS)
            times = [float(marks.nth(i).get_attribute("data-t") or "nan") for i in range(marks.count())]
            assert times == pytest.approx(CUTS, abs=TOL)
            # Each mark sits at its cut's place along the strip (the player's width), to within 2 pixels.
            duration = page.evaluate("document.getElementById('video').duration")
            bar = page.locator("#shot-strip").bounding_box()
            assert bar is not None and duration == pytest.approx(6.0, abs=0.1)
            for i, t in enumerate(times):
                box = marks.nth(i).bounding_box()
                assert box is not None
                centre = box["x"] + box["width"] / 2 - bar["x"]
                assert centre == pytest.approx(bar["width"] * t / duration, abs=2.0)
            assert page.locator("#shot-strip .shot").count() == len(SHOTS)
            # Clicking the last shot plays it from its start; the strip highlights it.
            page.locator("#shot-strip .shot").nth(2).click()
            wait_until(page, "document.querySelector('#shot-strip .shot.current')?.dataset.shot === '2'")
            now = page.evaluate("document.getElementById('video').currentTime")
            assert now == pytest.approx(times[1], abs=0.5)
            page.screenshot(path=str(tmp_path / "shots.png"), full_page=True)
        finally:
            page.close()
