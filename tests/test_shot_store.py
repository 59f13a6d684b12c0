"""Shots stored with the rows, without Ray: every frame and segment row knows its shot, segments carry their
shot's span, and both survive the fragment write with the tables' schemas. Without a shot detector the shot
index is 0 and the span is null."""

from __future__ import annotations

import numpy as np
import pytest

from operators.assemble import SegmentConfig, assemble_video
from operators.contract import FRAMES, SEGMENTS
from operators.shots import ShotConfig
from pipeline.store import schema as S
from pipeline.store.fragments import to_arrow
from tests.test_assembly import DETECT, DIM, N, frames

STARTS = [0.0, 5.0, 13.0]  # shots [0, 5), [5, 13), [13, 24)


def _with_shots() -> dict[str, np.ndarray]:
    rows = frames()
    bounds = np.empty(N, dtype=object)
    bounds[:] = [np.asarray(STARTS)] * N
    return {**rows, "shot_bounds": bounds}


def test_frames_and_segments_know_their_shot() -> None:
    seg_cfg = SegmentConfig(shots=ShotConfig(detector="content"))
    out = assemble_video("v", _with_shots(), seg_cfg, DETECT, 1.0)
    want_idx = np.searchsorted(STARTS, np.arange(N), side="right") - 1
    assert [f["shot_idx"] for f in sorted(out[FRAMES], key=lambda f: f["t"])] == want_idx.tolist()
    spans = {0: (0.0, 5.0), 1: (5.0, 13.0), 2: (13.0, 24.0)}
    segs = sorted(out[SEGMENTS], key=lambda s: s["start_s"])
    # shot 0 (5 s) in two windows, shot 1 (8 s) in two, shot 2 (11 s) in three
    assert [s["shot_idx"] for s in segs] == [0, 0, 1, 1, 2, 2, 2]
    for s in segs:
        assert (s["shot_start_s"], s["shot_end_s"]) == pytest.approx(spans[s["shot_idx"]])
        assert s["shot_start_s"] <= s["start_s"] < s["end_s"] <= s["shot_end_s"]
    for name in (FRAMES, SEGMENTS):  # the rows fit the tables' schemas, the added columns filled
        assert to_arrow(out[name], S.table_schema(name, DIM)).column("shot_idx").null_count == 0
    table = to_arrow(out[SEGMENTS], S.table_schema(SEGMENTS, DIM))
    assert table.column("shot_end_s").to_pylist()[-1] == pytest.approx(24.0)


def test_without_shot_detection_index_zero_and_no_span() -> None:
    out = assemble_video("v", frames(), SegmentConfig(), DETECT, 1.0)
    assert {f["shot_idx"] for f in out[FRAMES]} == {0}
    assert len(out[SEGMENTS]) == N // 4
    for s in out[SEGMENTS]:
        assert s["shot_idx"] == 0 and s["shot_start_s"] is None and s["shot_end_s"] is None
    table = to_arrow(out[SEGMENTS], S.table_schema(SEGMENTS, DIM))
    assert table.column("shot_start_s").null_count == len(out[SEGMENTS])


def test_a_failed_detection_is_one_shot_over_the_whole_video() -> None:
    rows = frames()
    bounds = np.empty(N, dtype=object)
    bounds[:] = [np.zeros(1)] * N  # what ShotDetect hands on when it could not read the video
    seg_cfg = SegmentConfig(shots=ShotConfig(detector="content"))
    out = assemble_video("v", {**rows, "shot_bounds": bounds}, seg_cfg, DETECT, 1.0)
    assert {(s["shot_idx"], s["shot_start_s"], s["shot_end_s"]) for s in out[SEGMENTS]} == {(0, 0.0, 24.0)}


def test_search_and_shot_list_on_a_table_from_before_shots(tmp_path) -> None:
    """Segments tables indexed before the shot columns existed still answer: hits and the shot list carry no shot
    until ``Store.migrate`` adds the (null) columns, and then still none."""
    from pipeline.search.searcher import Searcher
    from pipeline.search.shot_list import video_shots
    from pipeline.store.db import Store
    from tests.helpers import content, tables_of, tiny_config, video_row

    cfg = tiny_config(tmp_path / "db")
    rows = content("a", [0.0, 1.0, 5.0])
    dim = rows[S.SEGMENTS].schema.field("embedding").type.list_size
    store = Store(cfg.db.path, dim)
    store.begin([video_row("a")])
    store.commit([video_row("a")], tables_of(rows))
    store.table(S.SEGMENTS).drop_columns([f.name for f in S.table_schema(S.SEGMENTS, dim) if S.is_added(f)])
    old = Store(store.uri)
    searcher = Searcher(old, cfg)
    query = np.asarray(old.rows(S.SEGMENTS).column("embedding")[0].as_py(), np.float32)
    hits = [searcher._result(S.SEGMENTS, r, "/videos/x.mp4") for r in searcher.stage1(query, S.SEGMENTS, 3).to_pylist()]
    assert hits and all(h.shot_idx is None and h.shot_start_s is None for h in hits)
    assert video_shots(old, "a") == {"detected": False, "shots": [], "cuts": []}
    old.migrate()
    rows = searcher.stage1(query, S.SEGMENTS, 3)
    assert {"shot_idx", "shot_start_s", "shot_end_s"} <= set(rows.column_names)
    assert video_shots(old, "a")["detected"] is False
