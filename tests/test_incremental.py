"""Incremental runs on the real pipeline (tiny models, local Ray): a rerun after adding, modifying, renaming and
deleting files does exactly the expected work, a changed pipeline version re-indexes, failures are
quarantined and ``retry_failed`` brings them back, and a database of an older release gains the columns added
since then.

Detection is off here (``detect.enabled=false``) to keep three runs short: planning does not depend on it,
and the runs that compare every table, tracks included, are in test_resume.py and test_cluster.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pipeline.index.catalog import fingerprint, list_videos
from pipeline.index.runner import Runner, RunSummary, run_index
from pipeline.store import schema as S
from pipeline.store.db import Store
from pipeline.store.status import collect
from tests.helpers import tiny_config

CLIPS = {
    "a.mov": "decord/video_0.mov",
    "b.mp4": "imageio_test_images/realshort.mp4",
    "c.mov": "decord/video_90.mov",
}


def vid(path: Path) -> str:
    return S.make_id("video", fingerprint(str(path))[1])


def counts(s: RunSummary) -> dict[str, int]:
    keys = ("new", "changed", "skipped", "moved", "failed", "quarantined", "pruned", "indexed")
    return {k: getattr(s, k) for k in keys}


def test_incremental_runs_do_exactly_the_expected_work(tmp_path, testdata, ray_session) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    for name, rel in CLIPS.items():
        shutil.copy(testdata / rel, folder / name)
    (folder / "bad.mp4").write_bytes(b"\x00" * 5000)
    cfg = tiny_config(tmp_path / "db", "detect.enabled=false", "failures.quarantine_after=1")
    store = Store(cfg.db.path, 64)

    first = run_index(cfg, [str(folder)], progress=False, incremental=True)
    assert counts(first) == {
        "new": 3, "changed": 0, "skipped": 0, "moved": 0, "failed": 1, "quarantined": 0, "pruned": 0, "indexed": 3
    }  # fmt: skip
    ids = {name: vid(folder / name) for name in CLIPS}
    b_frames = store.count(S.FRAMES, f"video_id = '{ids['b.mp4']}'")

    # The database as an older release left it (without the columns added since): the next run adds them.
    for name in (S.FRAMES, S.SEGMENTS):
        store.table(name).drop_columns([f.name for f in S.table_schema(name, 64) if S.is_added(f)])
    store = Store(cfg.db.path)

    # modify b (new content at the same path), rename c, delete a, add d
    shutil.copy(testdata / "decord/video_180.mov", folder / "b.mp4")
    os.rename(folder / "c.mov", folder / "c2.mov")
    os.remove(folder / "a.mov")
    shutil.copy(testdata / "decord/video_270.mov", folder / "d.mov")
    new_b, d = vid(folder / "b.mp4"), vid(folder / "d.mov")

    second = run_index(cfg, [str(folder)], progress=False, incremental=True)
    assert counts(second) == {
        "new": 1, "changed": 1, "skipped": 1, "moved": 1, "failed": 0, "quarantined": 1, "pruned": 1, "indexed": 2
    }  # fmt: skip
    assert second.pruned_paths == [str(folder / "a.mov")]
    for name in (S.FRAMES, S.SEGMENTS):  # migrated: the new columns are there, and old rows kept
        assert store.table(name).schema.names == S.table_schema(name, 64).names, name
    assert second.frames == store.count(S.FRAMES, f"video_id IN ('{new_b}', '{d}')")  # only b and d encoded
    videos = {r["video_id"]: r for r in store.complete_videos().to_pylist()}
    assert set(videos) == {new_b, ids["c.mov"], d}
    assert videos[ids["c.mov"]]["path"] == str(folder / "c2.mov")  # renamed: path updated, same id
    assert videos[new_b]["path"] == str(folder / "b.mp4")
    for name in S.CONTENT_TABLES:  # nothing left of the deleted a or of b's old content
        assert store.count(name, f"video_id IN ('{ids['a.mov']}', '{ids['b.mp4']}')") == 0, name
        keys = store.rows(name, columns=[S.KEYS[name]]).column(S.KEYS[name]).to_pylist()
        assert len(keys) == len(set(keys)), name
    assert b_frames and store.count(S.FRAMES) == sum(v["n_samples"] for v in videos.values())

    stages = second.stages
    assert {"recover", "list", "plan", "prune", "graph", "commit"} <= set(stages)
    assert "assemble" not in stages  # assembly runs in the graph, on the workers
    assert {"decode", "preprocess", "embed", "route"} <= set("+".join(second.graph_stages).split("+"))
    recorded = json.loads(store.rows(S.RUNS, f"run_id = '{second.run_id}'").column("summary_json")[0].as_py())
    assert recorded["changed"] == 1 and recorded["pruned"] == 1 and recorded["kind"] == "index"

    st = collect(store, cfg.pipeline_version())
    assert st["videos"]["complete"] == 3 and st["videos"]["quarantined"] == 1
    assert st["pipeline_versions"] == {cfg.pipeline_version(): 3}

    # The quarantined file is planned again only with retry_failed.
    files, _ = list_videos([str(folder)])
    plain = Runner(cfg).plan(files, RunSummary("x", cfg.pipeline_version()))
    retry = Runner(cfg, retry_failed=True).plan(files, RunSummary("x", cfg.pipeline_version()))
    assert [f.path for f in plain.todo] == []
    assert [f.path for f in retry.todo] == [str(folder / "bad.mp4")]

    # A changed pipeline version re-indexes everything, each video's old rows replaced after its new ones.
    cfg2 = tiny_config(tmp_path / "db", "detect.enabled=false", "failures.quarantine_after=1", "segments.window_s=0.5")
    assert cfg2.pipeline_version() != cfg.pipeline_version()
    seg_version = store.table(S.SEGMENTS).version
    third = run_index(cfg2, [str(folder)], progress=False, incremental=True)
    assert counts(third) == {
        "new": 0, "changed": 3, "skipped": 0, "moved": 0, "failed": 0, "quarantined": 1, "pruned": 0, "indexed": 3
    }  # fmt: skip
    videos = store.complete_videos().to_pylist()
    assert {v["video_id"] for v in videos} == {new_b, ids["c.mov"], d}
    assert {v["pipeline_version"] for v in videos} == {cfg2.pipeline_version()}
    segs = store.table(S.SEGMENTS)
    rows = segs.to_arrow()
    starts, ends = rows.column("start_s").to_pylist(), rows.column("end_s").to_pylist()
    assert all(e - s <= 0.5 + 1e-6 for s, e in zip(starts, ends, strict=True))
    for v in range(seg_version, segs.version + 1):  # every version a reader could have opened
        segs.checkout(v)
        present = set(segs.to_arrow().column("video_id").to_pylist())
        assert present == {new_b, ids["c.mov"], d}, v  # no video ever lost its rows
    segs.checkout_latest()
