"""Asking a question about a moment of an indexed video (pipeline/search/ask.py): the frame comes from the stored
thumbnail near the time or is decoded there from the original; hits resolve to their keyframe; and the same
answer comes through Python, the CLI, ``POST /api/ask`` and the page's Ask box in Chromium, with clear errors.

One real clip is indexed with the tiny config once for the module (its VQA model is a tiny random ViLT)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from pipeline.errors import AskError
from pipeline.search.ask import Asker, decode_frame
from pipeline.search.searcher import Searcher, load_image
from pipeline.serve.app import create_app
from pipeline.store import schema as S
from pipeline.store.db import Store, quote
from tests.helpers import AUTH, RANDOM_BOXES, ROOT, TOKEN, clip, running, tiny_config, wait_until

QUESTION = "What colour is the flower?"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, ray_session) -> dict[str, Any]:
    from pipeline.index.runner import run_index

    folder = tmp_path_factory.mktemp("ask-videos")
    shutil.copy(clip("mdn/flower.webm"), folder / "flower.webm")
    # The flower has no object the trained detector knows; the hits asked about here include tracks.
    cfg = tiny_config(tmp_path_factory.mktemp("ask-db") / "vidsearch_db", *RANDOM_BOXES)
    summary = run_index(cfg, [str(folder)], progress=False)
    assert summary.failed == 0, summary.failures
    store = Store(cfg.db.path, 64)
    video = store.rows(S.VIDEOS).to_pylist()[0]
    thumbs = store.rows(S.THUMBNAILS, f"video_id = {quote(video['video_id'])}").to_pylist()
    return {"cfg": cfg, "store": store, "video": video, "thumbs": sorted(thumbs, key=lambda r: r["t"])}


@pytest.fixture(scope="module")
def asker(indexed) -> Asker:
    return Asker(indexed["cfg"], indexed["store"])


def reference_frame(path: str, t: float, size: tuple[int, int]) -> tuple[float, np.ndarray]:
    """The frame nearest ``t`` by decoding the whole file with PyAV, independently of ``decode_frame``."""
    import av

    with av.open(path) as c:
        frames = [(float(f.pts * f.time_base), f) for f in c.decode(video=0)]
        t0 = frames[0][0]
        ft, frame = min(frames, key=lambda x: abs(x[0] - t0 - t))
        return ft - t0, frame.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray()


def test_a_stored_frame_is_used_near_its_time_and_a_decoded_one_elsewhere(indexed, asker) -> None:
    video, thumb = indexed["video"], indexed["thumbs"][2]
    assert thumb["t"] == pytest.approx(2.0, abs=0.05)  # sampled at 1 fps

    got = asker.ask(QUESTION, video_id=video["video_id"], t=thumb["t"] + 0.1)
    assert (got.source, got.thumb_id, got.t) == ("thumbnail", thumb["thumb_id"], thumb["t"])
    assert got.asked_t == thumb["t"] + 0.1
    assert got.frame_jpeg == thumb["jpeg"] and got.as_dict()["frame_jpeg"] is None
    want = asker.model.answer(load_image(thumb["jpeg"]), QUESTION)
    assert [a["answer"] for a in got.answers] == [a.answer for a in want] and got.answer == want[0].answer
    assert got.random_weights and got.checkpoint is None and got.model == "vilt"

    between = thumb["t"] + 0.5  # beyond vqa.thumb_tolerance_s of every stored frame
    got = asker.ask(QUESTION, video_id=video["video_id"], t=between)
    assert got.source == "decoded" and got.thumb_id is None
    assert (got.width, got.height) == (640, 360)  # 960x540 scaled in the decoder to vqa.decode_max_side
    ref_t, ref = reference_frame(video["path"], between, (640, 360))
    assert got.t == pytest.approx(ref_t, abs=1e-6) and abs(got.t - between) < 0.05
    t, rgb = decode_frame(video["path"], between, indexed["cfg"].vqa)
    assert t == got.t and np.array_equal(rgb, ref)  # the very frame, not a neighbour
    jpeg = np.asarray(Image.open(io.BytesIO(base64.b64decode(got.as_dict()["frame_jpeg"]))).convert("RGB"))
    assert np.abs(jpeg.astype(int) - ref.astype(int)).mean() < 4  # what was asked on, as JPEG
    assert [a["answer"] for a in got.answers] == [a.answer for a in asker.model.answer(rgb, QUESTION)]


def test_hits_resolve_to_their_keyframe(indexed, asker) -> None:
    store, vid = indexed["store"], indexed["video"]["video_id"]
    thumb_t = {r["thumb_id"]: r["t"] for r in indexed["thumbs"]}
    segment = store.rows(S.SEGMENTS).to_pylist()[-1]
    got = asker.ask(QUESTION, hit_id=segment["segment_id"])
    assert (got.video_id, got.thumb_id, got.t) == (vid, segment["thumb_id"], thumb_t[segment["thumb_id"]])
    frame = store.rows(S.FRAMES).to_pylist()[1]
    got = asker.ask(QUESTION, hit_id=frame["frame_id"])
    assert (got.thumb_id, got.t) == (frame["frame_id"], frame["t"])
    track = store.rows(S.TRACKS).to_pylist()[0]
    got = asker.ask(QUESTION, hit_id=track["track_id"])
    assert got.asked_t == track["best_t"] and got.thumb_id == track["thumb_id"]
    got = asker.ask(QUESTION, hit_id=segment["segment_id"], t=0.0)  # a time given with a hit overrides it
    assert got.t == 0.0 and got.thumb_id == indexed["thumbs"][0]["thumb_id"]


BAD = [
    ({"question": QUESTION, "video_id": "0" * 8 + "-0000-5000-8000-" + "0" * 12, "t": 1.0}, 404, "no indexed video"),
    ({"question": QUESTION, "video_id": "../etc/passwd", "t": 1.0}, 404, "no indexed video"),
    ({"question": QUESTION, "hit_id": "0" * 8 + "-0000-5000-8000-" + "0" * 12}, 404, "no segment, frame or track"),
    ({"question": QUESTION, "video_id": "VID", "t": -0.5}, 400, "outside the video (0 to 5.01 s)"),
    ({"question": QUESTION, "video_id": "VID", "t": 60.0}, 400, "t=60 s is outside the video"),
    ({"question": QUESTION, "video_id": "VID"}, 400, "give the time"),
    ({"question": QUESTION}, 400, "either a video id and a time, or the id of a search hit"),
    ({"question": "  ", "video_id": "VID", "t": 1.0}, 400, "the question is empty"),
    ({"question": "why " * 51, "video_id": "VID", "t": 1.0}, 400, "longer than 200 characters"),
    ({"question": "a\x00b", "video_id": "VID", "t": 1.0}, 400, "NUL"),
]


def _bad(case: dict[str, Any], vid: str) -> dict[str, Any]:
    return {k: vid if v == "VID" else v for k, v in case.items()}


@pytest.mark.parametrize(("case", "status", "message"), BAD)
def test_bad_questions_are_refused_with_a_reason(indexed, asker, case, status, message) -> None:
    body = _bad(case, indexed["video"]["video_id"])
    with pytest.raises(AskError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        asker.ask(body.pop("question"), **body)
    assert err.value.status == status
    with pytest.raises(AskError, match="finite"):
        asker.ask(QUESTION, video_id=indexed["video"]["video_id"], t=float("nan"))


def test_a_frame_is_decoded_only_from_the_verified_file_under_the_media_roots(indexed, tmp_path) -> None:
    video, vid = indexed["video"], indexed["video"]["video_id"]
    fenced = Asker(indexed["cfg"], indexed["store"], media_roots=[str(tmp_path)])
    assert fenced.ask(QUESTION, video_id=vid, t=1.0).source == "thumbnail"  # stored frames need no file
    with pytest.raises(AskError, match="outside the media roots") as err:
        fenced.ask(QUESTION, video_id=vid, t=1.5)
    assert err.value.status == 409
    with pytest.raises(AskError, match="no longer the indexed content") as err:
        Asker(indexed["cfg"], indexed["store"]).frame({**video, "fingerprint": "changed"}, 1.5)
    assert err.value.status == 409


def _cli(*args: str, db: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "run_pipeline.py", "ask", *args, "--config", "tiny", "--db", db]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_answers_like_python_and_refuses_in_one_line(indexed, asker, tmp_path) -> None:
    db, vid = indexed["cfg"].db.path, indexed["video"]["video_id"]
    out = _cli("--video", vid, "--t", "2.5", QUESTION, "--json", "--frame-out", str(tmp_path / "f.jpg"), db=db)
    assert out.returncode == 0, out.stderr
    assert "random weights; its answers carry no meaning" in out.stderr
    got, want = json.loads(out.stdout), asker.ask(QUESTION, video_id=vid, t=2.5)
    assert [a["answer"] for a in got["answers"]] == [a["answer"] for a in want.answers]
    np.testing.assert_allclose([a["score"] for a in got["answers"]], [a["score"] for a in want.answers], atol=1e-5)
    assert (got["source"], got["t"], got["video_id"]) == ("decoded", want.t, vid)
    assert Image.open(tmp_path / "f.jpg").size == (640, 360)

    segment = indexed["store"].rows(S.SEGMENTS).to_pylist()[0]
    out = _cli("--hit", segment["segment_id"], QUESTION, db=db)
    assert out.returncode == 0, out.stderr
    want = asker.ask(QUESTION, hit_id=segment["segment_id"])
    assert out.stdout.splitlines()[0] == f"{want.answer}  ({want.score:.3f})"
    assert f"(thumbnail {segment['thumb_id']})" in out.stdout

    out = _cli("--video", vid, "--t", "99", QUESTION, db=db)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and errors == ["error: t=99 s is outside the video (0 to 5.01 s)"]
    out = _cli("--video", "nope", "--t", "1", QUESTION, db=db)
    assert out.returncode == 2 and "error: no indexed video with that id" in out.stderr


@pytest.fixture(scope="module")
def site(indexed):
    cfg = indexed["cfg"]
    with running(create_app(cfg, token=TOKEN, searcher=Searcher(cfg.db.path, cfg))) as url:
        yield url


def test_http_ask_behind_the_token_with_4xx_for_bad_input(indexed, asker, site) -> None:
    vid = indexed["video"]["video_id"]
    with httpx.Client(base_url=site, timeout=120) as http:
        assert http.post("/api/ask", json={"question": QUESTION, "video_id": vid, "t": 2.0}).status_code == 401
        r = http.post("/api/ask", json={"question": QUESTION, "video_id": vid, "t": 2.0}, headers=AUTH)
        assert r.status_code == 200, r.text
        body, want = r.json(), asker.ask(QUESTION, video_id=vid, t=2.0)
        assert (body["answer"], body["thumb_id"], body["t"]) == (want.answer, want.thumb_id, want.t)
        np.testing.assert_allclose(body["score"], want.score, atol=1e-5)
        assert http.get(f"/api/thumbnails/{body['thumb_id']}", headers=AUTH).content == want.frame_jpeg

        r = http.post("/api/ask", json={"question": QUESTION, "video_id": vid, "t": 3.5}, headers=AUTH)
        assert r.status_code == 200 and r.json()["source"] == "decoded"
        assert Image.open(io.BytesIO(base64.b64decode(r.json()["frame_jpeg"]))).size == (640, 360)
        track = indexed["store"].rows(S.TRACKS).to_pylist()[0]
        r = http.post("/api/ask", json={"question": QUESTION, "hit_id": track["track_id"]}, headers=AUTH)
        assert r.status_code == 200 and r.json()["asked_t"] == track["best_t"]

        for case, status, message in BAD:
            r = http.post("/api/ask", json=_bad(case, vid), headers=AUTH)
            assert (r.status_code, message in r.json()["detail"]) == (status, True), r.text
        for raw, status in (
            (json.dumps({"question": QUESTION, "video_id": vid, "t": 1, "k": 3}), 422),  # unknown field
            (json.dumps({"question": QUESTION, "video_id": vid, "t": "soon"}), 422),
            (json.dumps([QUESTION]), 422),
            ("{not json", 422),
            (json.dumps({"question": "x" * 20_000, "video_id": vid, "t": 1}), 413),
        ):
            r = http.post("/api/ask", content=raw, headers={**AUTH, "Content-Type": "application/json"})
            assert r.status_code == status, r.text
        assert "under 16 KiB" in r.json()["detail"]


def _seek(page, t: float) -> None:  # type: ignore[no-untyped-def]
    page.evaluate(
        """(t) => { const v = document.getElementById('video'); v.pause(); window.seekedTo = null;
                    v.addEventListener('seeked', () => { window.seekedTo = v.currentTime; }, { once: true });
                    v.currentTime = t; }""",
        t,
    )
    wait_until(page, "window.seekedTo !== null")


@pytest.mark.browser
def test_the_ask_box_beside_the_player(indexed, asker, site, browser, tmp_path: Path) -> None:
    vid = indexed["video"]["video_id"]
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    try:
        page.goto(f"{site}/login")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(f"{site}/")
        page.fill("#text", "a flower")
        page.click("#go")
        page.wait_for_selector(".result")
        page.locator(".result").first.click()
        wait_until(page, "document.getElementById('video').readyState >= 1")
        assert page.locator("#ask").is_visible()

        _seek(page, 2.0)  # a sampled time: the stored thumbnail
        page.fill("#ask-question", QUESTION)
        page.click("#ask-go")
        page.wait_for_selector(".ask-top")
        want = asker.ask(QUESTION, video_id=vid, t=2.0)
        assert page.inner_text(".ask-top") == want.answer
        others = page.locator(".ask-others li").all_inner_texts()
        assert [o.rsplit(" (", 1)[0] for o in others] == [a["answer"] for a in want.answers[1:]]
        assert page.get_attribute(".ask-frame", "src") == f"/api/thumbnails/{want.thumb_id}"
        wait_until(page, "document.querySelector('.ask-frame').naturalWidth > 0")  # through the session cookie
        assert "stored frame at 0:02.0" in page.inner_text("#ask-answer")
        assert "random weights" in page.inner_text("#ask-answer")

        _seek(page, 2.5)  # between samples: decoded from the original
        page.click("#ask-go")
        wait_until(page, "(document.querySelector('.ask-frame') || {src: ''}).src.startsWith('data:image/jpeg')")
        wait_until(page, "document.querySelector('.ask-frame').naturalWidth === 640")
        asked = page.evaluate("document.getElementById('video').currentTime")
        assert page.inner_text(".ask-top") == asker.ask(QUESTION, video_id=vid, t=asked).answer
        page.screenshot(path=str(tmp_path / "ask.png"), full_page=True)

        page.fill("#ask-question", "")
        page.click("#ask-go")
        page.wait_for_selector(".ask-answer.error")
        assert page.inner_text("#ask-answer") == "the question is empty"
    finally:
        page.close()


@pytest.mark.parametrize(
    ("rel", "fps"), [("decord/video_90.mov", 30.0), ("decord/video_270.mov", 30.0), ("mmaction2/test.avi", 1.0)]
)
def test_a_decoded_frame_is_the_one_indexing_samples_upright(rel, fps) -> None:
    """``decode_frame`` (seek, then decode forward) gives the indexing decoder's frame at the same time, rotation
    applied, pixel for pixel (both scale with swscale). The .mov clips are 3 frames, rotated 90 and 270 degrees;
    test.avi (MPEG-4 with packed B-frames) has a single keyframe, at the start: every seek must go back to it."""
    from operators.decode import Decode, DecodeConfig
    from operators.vqa import VqaConfig

    path = clip(rel)
    rows = [b for b in Decode(DecodeConfig(backend="pyav", max_side=320, fps=fps)).iter_video("v", path) if len(b["t"])]
    sampled = {float(t): f for b in rows for t, f in zip(b["t"], b["frame"], strict=True)}
    assert len(sampled) >= 3 and not any(b["error"][0] for b in rows)
    cfg = VqaConfig(decode_max_side=320)
    ts = sorted(sampled)
    for t in (ts[1], ts[len(ts) // 2 + 1], ts[-1]):
        got_t, frame = decode_frame(path, t + 0.004, cfg)  # off the frame's time by less than half a frame
        assert got_t == pytest.approx(t, abs=1e-9)
        assert np.array_equal(frame, sampled[t])
    assert frame.shape[0] > frame.shape[1] if "90" in rel or "270" in rel else frame.shape[1] > frame.shape[0]
