"""Shots stored with the rows, without Ray: every frame and segment row knows its shot, segments carry their
shot's span, and both survive the fragment write with the tables' schemas. Without a shot detector the shot
index is 0 and the span is null."""

from __future__ import annotations

import numpy as np
import pytest

from operators.assemble import SegmentConfig, assemble_video
from operators.contract import FRAMES, SEGMENTS
from operators.shots import ShotConfig
from pipeline import schema as S
from pipeline.fragments import to_arrow
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
