"""Index real clips on real Ray with the tiny config, then search by text and by image."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from operators.decode import Decode
from pipeline.index.runner import run_index
from pipeline.search.searcher import Searcher
from pipeline.store import schema as S
from pipeline.store.db import Store
from tests.helpers import ROOT, tiny_config


def _store(cfg) -> Store:
    return Store(cfg.db.path, cfg.encoder.architecture["embed_dim"])


def test_row_counts_match_what_decode_produced(indexed_db, sample_folder) -> None:
    cfg, summary = indexed_db
    store = _store(cfg)
    videos = store.complete_videos().to_pylist()
    assert len(videos) == 3 and summary.indexed == 3
    decode = Decode(cfg.decode)
    for v in videos:
        expected_t = np.concatenate([c["t"] for c in decode.iter_video(v["video_id"], v["path"])])
        frames = store.rows(S.FRAMES, f"video_id = '{v['video_id']}'").to_pylist()
        assert sorted(f["t"] for f in frames) == sorted(expected_t.tolist())
        assert v["n_samples"] == len(expected_t)
        segments = store.rows(S.SEGMENTS, f"video_id = '{v['video_id']}'").to_pylist()
        assert len(segments) == len(np.unique(np.floor(expected_t / cfg.segments.window_s)))
        assert sum(s["n_frames"] for s in segments) == len(expected_t)
        thumbs = store.count(S.THUMBNAILS, f"video_id = '{v['video_id']}'")
        assert thumbs == len(expected_t)
    assert store.count(S.FRAMES) == summary.frames
    assert store.count(S.SEGMENTS) == summary.segments


def test_text_search_returns_real_paths_and_times_inside_the_video(indexed_db) -> None:
    cfg, _ = indexed_db
    searcher = Searcher(cfg.db.path, cfg)
    durations = {v["video_id"]: v["duration_s"] for v in searcher.store.complete_videos().to_pylist()}
    for level in ("segments", "frames", "tracks"):
        results = searcher.search(text="a red flower opening", k=5, level=level)
        assert results, level
        for r in results:
            assert Path(r.path).is_file()
            assert 0.0 <= r.start_s <= r.end_s <= durations[r.video_id] + 1e-6
            assert -1.0 <= r.stage1_score <= 1.0
        assert [r.rank for r in results] == list(range(1, len(results) + 1))
        assert all(a.score >= b.score for a, b in zip(results, results[1:], strict=False))


def _frame_at(path: str, t: float) -> np.ndarray:
    with av.open(path) as c:
        stream = c.streams.video[0]
        for frame in c.decode(video=0):
            if frame.pts * stream.time_base >= t:
                return frame.to_ndarray(format="rgb24")
    raise AssertionError("time beyond the clip")


def test_near_duplicate_image_query_finds_its_clip_and_time(indexed_db, sample_folder) -> None:
    cfg, _ = indexed_db
    searcher = Searcher(cfg.db.path, cfg)
    for name, t in (("flower.webm", 2.5), ("test.avi", 3.4), ("book.mkv", 1.6)):
        path = str(sample_folder / name)
        image = _frame_at(path, t)  # a time between two points of the 1 fps sampling grid
        hits = searcher.search(image=image, k=3, level="frames", rerank=None)
        assert Path(hits[0].path).name == name
        assert abs(hits[0].start_s - t) <= 1.0 / cfg.decode.fps + 1e-6
        seg = searcher.search(image=image, k=1, level="segments", rerank=None)[0]
        step = 1.0 / cfg.decode.fps
        assert Path(seg.path).name == name and seg.start_s - step <= t <= seg.end_s + step


def test_rerun_adds_nothing_and_bad_files_become_failures(tmp_path, sample_folder, ray_session, testdata) -> None:
    folder = tmp_path / "videos"
    shutil.copytree(sample_folder, folder)
    good = (testdata / "imageio_test_images/realshort.mp4").read_bytes()
    (folder / "corrupt.mp4").write_bytes(good[: len(good) // 3][:4096] + bytes(range(256)) * 64)
    (folder / "notes.mp4").write_text("meeting notes, not a video\n" * 100)
    cfg = tiny_config(tmp_path / "db")
    first = run_index(cfg, [str(folder)], progress=False)
    assert first.indexed == 3 and first.failed == 2
    assert {Path(f["path"]).name for f in first.failures} == {"corrupt.mp4", "notes.mp4"}
    store = _store(cfg)
    failures = store.rows(S.FAILURES).to_pylist()
    assert {Path(f["path"]).name for f in failures} == {"corrupt.mp4", "notes.mp4"}
    assert all(f["message"].startswith("cannot decode video") for f in failures)
    counts = {t: store.count(t) for t in S.CONTENT_TABLES}
    assert counts[S.FRAMES] == first.frames > 0

    second = run_index(cfg, [str(folder)], progress=False)
    assert second.indexed == 0 and second.skipped == 3
    assert {t: store.count(t) for t in S.CONTENT_TABLES} == counts
    ids = store.rows(S.FRAMES, columns=["frame_id"]).column("frame_id").to_pylist()
    assert len(ids) == len(set(ids))


def test_cli_index_and_search(tmp_path, testdata) -> None:
    db = tmp_path / "db"
    run = [sys.executable, str(ROOT / "run_pipeline.py")]
    clip = str(testdata / "mdn/flower.webm")
    index = subprocess.run(
        [*run, "index", clip, "--config", "tiny", "--db", str(db), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert index.returncode == 0, index.stderr[-2000:]
    assert "1 indexed" in index.stdout
    assert "carry no meaning" in index.stderr
    search = subprocess.run(
        [*run, "search", "a flower", "--config", "tiny", "--db", str(db), "-k", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert search.returncode == 0, search.stderr[-2000:]
    hits = json.loads(search.stdout)
    assert len(hits) == 2 and all(h["path"] == clip for h in hits)
    table = subprocess.run(
        [*run, "search", "a flower", "--config", "tiny", "--db", str(db), "--level", "frames"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert "flower.webm" in table.stdout and "rank" in table.stdout.splitlines()[0]
    empty = subprocess.run(
        [*run, "search", "   ", "--config", "tiny", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert empty.returncode == 2 and "empty" in empty.stderr


@pytest.mark.slow
def test_readme_first_run_prints_right_hits(tmp_path) -> None:
    """The README's second set-up command, as written there, on a copy of samples/: the trained detector's person
    tracks come from the clips with people in them (friday.mp4, book.mkv), never from the flower."""
    import re
    import shlex

    block = re.search(r"## First run.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block is not None
    command = block.group(1).strip().splitlines()[1]
    assert command.startswith("python run_pipeline.py index samples --config tiny && ")
    shutil.copytree(ROOT / "samples", tmp_path / "samples")
    run = f"{shlex.quote(sys.executable)} {shlex.quote(str(ROOT / 'run_pipeline.py'))}"
    out = subprocess.run(
        command.replace("python run_pipeline.py", run), shell=True, capture_output=True, text=True, timeout=600,
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines() if re.match(r"\s+\d+\s+-?\d", line)]
    assert rows, out.stdout
    assert all(r[-2] == "person" for r in rows), out.stdout  # the objects column of every hit
    videos = {r[-1].rsplit("/", 1)[-1] for r in rows}
    assert videos <= {"friday.mp4", "book.mkv"} and "friday.mp4" in videos, out.stdout
