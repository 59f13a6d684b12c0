"""Shots through the whole pipeline: a composite of three real clips joined by hard cuts at 2 s and 4 s is
indexed on Ray with the content detector; segments follow the cuts (none crosses one) and the tracker restarts
at every cut (no track spans two shots)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline import schema as S
from pipeline.evaluate_shots import ShotManifest, build_clip
from pipeline.store import Store
from tests.helpers import TESTDATA, tiny_config

PARTS = ["mmaction2/test.mp4", "mmaction2/demo.mp4", "decord/flipping_a_pancake.mkv"]
CUTS = [2.0, 4.0]


@pytest.fixture(scope="module")
def composite(tmp_path_factory) -> Path:
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg command-line tool is needed to build composites (.ci/run installs it)")
    spec = {"id": "hard", "category": "hard", "parts": [{"video": p, "duration": 2} for p in PARTS]}
    m = ShotManifest.model_validate({"fps": 25, "size": [320, 180], "detectors": ["content"], "clips": [spec]})
    work = tmp_path_factory.mktemp("shot_pipeline")
    folder = work / "videos"
    folder.mkdir()
    shutil.copy(build_clip(m.clips[0], m, TESTDATA, work / "clips"), folder / "hard.mp4")
    return folder


def test_segments_follow_cuts_and_tracks_stay_inside_shots(composite, ray_session, tmp_path) -> None:
    from pipeline.runner import run_index

    cfg = tiny_config(tmp_path / "db", "segments.shots=content", "decode.fps=2")
    summary = run_index(cfg, [str(composite)], progress=False)
    assert summary.failed == 0 and summary.indexed == 1, summary.failures
    store = Store(cfg.db.path)
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
