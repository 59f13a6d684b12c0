"""The object path end to end on real video with the tiny config (random YOLO11n at a lowered threshold)."""

from __future__ import annotations

import json
import subprocess
import sys

from pipeline.index.runner import run_index
from pipeline.search.searcher import Searcher
from pipeline.store import schema as S
from pipeline.store.db import Store
from tests.helpers import ROOT, tiny_config


def _tracks(cfg) -> list[dict]:
    return Store(cfg.db.path, cfg.encoder.architecture["embed_dim"]).rows(S.TRACKS).to_pylist()


def test_track_rows_have_ordered_trajectories_inside_the_frame(indexed_db) -> None:
    cfg, summary = indexed_db
    tracks = _tracks(cfg)
    assert len(tracks) == summary.tracks > 0
    for t in tracks:
        times = [o["t"] for o in t["trajectory"]]
        assert times == sorted(times) and len(times) == t["n_obs"]
        assert t["t_first"] == times[0] and t["t_last"] == times[-1]
        for o in t["trajectory"]:
            assert 0.0 <= o["x1"] <= o["x2"] <= 1.0 and 0.0 <= o["y1"] <= o["y2"] <= 1.0
        assert t["best_t"] in times
        assert t["thumb_id"]


def test_frames_list_their_boxes_with_track_ids(indexed_db) -> None:
    cfg, _ = indexed_db
    store = Store(cfg.db.path, cfg.encoder.architecture["embed_dim"])
    track_ids = {t["track_id"] for t in _tracks(cfg)}
    frames = store.rows(S.FRAMES).to_pylist()
    boxed = [b for f in frames for b in f["boxes"]]
    assert boxed, "the trained detector finds the people in the sample clips"
    assert {b["track_id"] for b in boxed if b["track_id"]} <= track_ids
    hits = Searcher(cfg.db.path, cfg).search(
        text="a person", k=3, level="frames", rerank=None, filters={"classes": ["person"]}
    )
    assert hits and all(any(b.class_name == "person" for b in h.boxes) for h in hits)


def test_track_ids_are_stable_across_a_rerun(indexed_db, tmp_path, sample_folder, ray_session) -> None:
    cfg, _ = indexed_db
    again = tiny_config(tmp_path / "db")
    run_index(again, [str(sample_folder)], progress=False)
    assert sorted(t["track_id"] for t in _tracks(again)) == sorted(t["track_id"] for t in _tracks(cfg))
    before = len(_tracks(again))
    run_index(again, [str(sample_folder)], progress=False)
    assert len(_tracks(again)) == before


def test_search_tracks_from_the_cli_with_a_class_filter(indexed_db) -> None:
    cfg, _ = indexed_db
    tracks = _tracks(cfg)
    cls = tracks[0]["class_name"]
    run = [
        sys.executable,
        str(ROOT / "run_pipeline.py"),
        "search",
        "a moving object",
        "--config",
        "tiny",
        "--db",
        cfg.db.path,
        "--level",
        "tracks",
        "-k",
        "50",
        "--json",
    ]
    every = json.loads(subprocess.run(run, capture_output=True, text=True, timeout=120, cwd=ROOT).stdout)
    assert every and all(h["level"] == "tracks" and h["class_name"] for h in every)
    for h in every:
        assert h["start_s"] <= h["end_s"] and h["trajectory"]
    only = json.loads(
        subprocess.run([*run, "--class", cls], capture_output=True, text=True, timeout=120, cwd=ROOT).stdout
    )
    assert only and {h["class_name"] for h in only} == {cls}
    assert len(only) == sum(1 for t in tracks if t["class_name"] == cls) or len(only) == 50
